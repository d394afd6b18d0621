//! Section 3, uncached RS256 token issue: `SigningKeys::sign_jwt` on one thread pinned to one server core,
//! then HTTP tokens with `bypass_cache=true` (every request signs), compared with the cached rate.

use std::time::{Duration, Instant};

use crate::Rig;
use crate::http::{self, Servers};
use crate::load;
use crate::report::{Report, row, us};
use anyhow::Result;

/// Section 3. The run's `secs` bounds the signing loop (at most 3 s); `cached_rps` is section 1's
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
    let sign_secs = secs.min(3.0);
    let cores = pin.server_cores.clone();
    let (signed, took) = std::thread::scope(|sc| {
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
            let start = Instant::now();
            let mut n = 0u64;
            // Bounded by count and time.
            while n < 1_000_000 && start.elapsed().as_secs_f64() < sign_secs {
                if keys.sign_jwt(&claims).is_err() {
                    break;
                }
                n += 1;
            }
            (n, start.elapsed())
        })
        .join()
        .unwrap_or((0, Duration::from_secs(1)))
    });
    let per_core = signed as f64 / took.as_secs_f64().max(1e-9);
    report.push(row(
        s3,
        "SigningKeys::sign_jwt, one thread pinned to one core",
        format!("{per_core:.0} tokens/s/core"),
        format!("{signed} signatures in {:.1} s", took.as_secs_f64()),
        "",
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
