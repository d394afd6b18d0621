//! Section 3, uncached RS256 token issue: `SigningKeys::sign_jwt` on one thread pinned to one server core,
//! against the limit measured on the same thread in the same run — a bare RSA-2048 PKCS#1 v1.5 SHA-256 sign
//! loop with aws-lc-rs over a message of a token's size, interleaved slice by slice with `sign_jwt` so that
//! background load hits both alike — then HTTP tokens with `bypass_cache=true` (every request signs),
//! compared with the cached rate.

use std::time::{Duration, Instant};

use crate::Rig;
use crate::http::{self, Servers};
use crate::load;
use crate::report::{Report, row, us, verdict};
use anyhow::Result;

/// Length of one interleaved slice (half `sign_jwt`, half the limit's loop).
const SLICE_SECS: f64 = 0.5;

/// Section 3. The run's `secs` bounds each signing loop (at least 3 s each); `cached_rps` is section 1's
/// cached-token rate.
pub fn section(rig: &Rig, servers: &Servers, cached_rps: f64, report: &mut Report) -> Result<()> {
    let Rig {
        server_rt,
        load_rt,
        pin,
        secs,
        load: l,
        ..
    } = rig;
    let s3 = "3 RS256";
    let keys = server_rt.block_on(servers.mock.signing_keys())?;
    // Both loops together: each gets half, at least 3 s, in interleaved slices of `SLICE_SECS`.
    let sign_secs = 2.0 * secs.max(3.0);
    let cores = pin.server_cores.clone();
    let (signed, limit) = std::thread::scope(|sc| {
        sc.spawn(|| {
            load::pin_current_thread(&cores);
            let claims = serde_json::json!({
                "aud": "https://management.azure.com/",
                "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
                "iat": 1_700_000_000, "nbf": 1_700_000_000, "exp": 1_700_086_399,
                "aio": "E2ZgYDj0bench", "appid": "5b8d3bfb-42a5-4c8b-9a4f-0a5f7a0b1c2d",
                "appidacr": "2", "idp": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
                "oid": "9d3b0e0c-0000-4000-8000-000000000001", "rh": "0.bench.",
                "sub": "9d3b0e0c-0000-4000-8000-000000000001", "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "uti": "benchuti", "ver": "1.0",
                "xms_mirid": "/subscriptions/0/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            });
            // The limit's key and message: a fresh RSA-2048 key, and a signing input of a token's length.
            let limit_key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).ok();
            let message = keys
                .sign_jwt(&claims)
                .map(|t| t.rsplit_once('.').map_or(0, |(input, _)| input.len()))
                .map(|len| vec![b'x'; len])
                .unwrap_or_default();
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let mut sig = vec![0u8; 256];
            let (mut jwt, mut limit) = ((0u64, Duration::ZERO), (0u64, Duration::ZERO));
            // Interleaved slices, each bounded by count and time.
            let slices = (sign_secs / SLICE_SECS).ceil().max(1.0) as u32;
            for _ in 0..slices {
                let start = Instant::now();
                while jwt.0 < 1_000_000 && start.elapsed().as_secs_f64() < SLICE_SECS / 2.0 {
                    if keys.sign_jwt(&claims).is_err() {
                        break;
                    }
                    jwt.0 += 1;
                }
                jwt.1 += start.elapsed();
                let Some(key) = limit_key.as_ref() else {
                    continue;
                };
                let start = Instant::now();
                while limit.0 < 1_000_000 && start.elapsed().as_secs_f64() < SLICE_SECS / 2.0 {
                    if key
                        .sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, &message, &mut sig)
                        .is_err()
                    {
                        break;
                    }
                    limit.0 += 1;
                }
                limit.1 += start.elapsed();
            }
            (jwt, limit)
        })
        .join()
        .unwrap_or(((0, Duration::from_secs(1)), (0, Duration::from_secs(1))))
    });
    let rate = |(n, t): (u64, Duration)| n as f64 / t.as_secs_f64().max(1e-9);
    let (per_core, limit_rate) = (rate(signed), rate(limit));
    let ratio = per_core / limit_rate.max(1e-9);
    report.push(row(
        s3,
        "RSA limit: RSA-2048 PKCS#1 v1.5 SHA-256 sign loop, aws-lc-rs, same thread",
        format!("{limit_rate:.0} signatures/s/core"),
        format!("{} signatures in {:.1} s", limit.0, limit.1.as_secs_f64()),
        "",
    ));
    report.push(row(
        s3,
        "SigningKeys::sign_jwt, one thread pinned to one core",
        format!("{per_core:.0} tokens/s/core"),
        format!(
            "{} signatures in {:.1} s; RSA limit {limit_rate:.0}/s",
            signed.0,
            signed.1.as_secs_f64()
        ),
        format!(
            "{ratio:.2}× the RSA limit (goal ≥ 0.90×) {}",
            verdict(ratio >= 0.9)
        ),
    ));
    let r = load_rt.block_on(load::run(&http::uncached_token(servers), *l))?;
    report.push(row(
        s3,
        format!(
            "HTTP token, bypass_cache=true (c={}, server on {} core(s))",
            l.concurrency,
            pin.server_cores.len().max(1)
        ),
        format!(
            "{:.0} req/s ({:.0} /core)",
            r.rps(),
            r.rps() / pin.server_cores.len().max(1) as f64
        ),
        format!(
            "p50 {:.0} µs, p99 {:.0} µs",
            us(r.hist.value_at_quantile(0.5)),
            us(r.hist.value_at_quantile(0.99))
        ),
        format!(
            "{:.1}% of the cached rate",
            100.0 * r.rps() / cached_rps.max(1e-9)
        ),
    ));
    Ok(())
}
