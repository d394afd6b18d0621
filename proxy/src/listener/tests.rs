//! Unit tests of the connection bounds: limits, admission and the per-connection clock.

use super::*;

#[test]
fn limits_fit_below_the_descriptor_limit() {
    assert_eq!(fit_to_nofile(2048, 128, 1_048_576), 2048);
    // 1024 descriptors: (1024 - 256 - 128) / 2.
    assert_eq!(fit_to_nofile(2048, 128, 1024), 320);
    assert_eq!(fit_to_nofile(2048, 128, 100), 1);
}

#[test]
fn per_ip_and_global_limits_refuse_and_release() {
    let stats = Arc::new(ListenerStats::default());
    let metrics = Metrics::new();
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: 3,
        max_connections_per_ip: 2,
    };
    let a = IpAddr::from([127, 0, 0, 2]);
    let b = IpAddr::from([127, 0, 0, 3]);
    let admit = |ip| stats.admit(ip, &limits, ListenerKind::Imds, &metrics);
    let a1 = admit(a);
    let a2 = admit(a);
    assert!(a1.is_ok() && a2.is_ok());
    assert_eq!(admit(a).err(), Some(Refusal::MaxConnectionsPerIp));
    let b1 = admit(b);
    assert!(b1.is_ok());
    assert_eq!(admit(b).err(), Some(Refusal::MaxConnections));
    assert_eq!(stats.open(), 3);
    drop((a1, a2, b1));
    assert_eq!(stats.open(), 0);
    assert!(stats.per_ip.lock().map(|m| m.is_empty()).unwrap_or(false));
}

#[test]
fn clock_deadlines_follow_the_connection_state() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1,
        max_connections_per_ip: 1,
    };
    let clock = ConnClock::new(&limits);
    assert_eq!(
        clock.deadline(&limits).map(|d| d.1),
        Some(Timeout::HeaderRead)
    );
    clock.begin();
    assert!(clock.deadline(&limits).is_none());
    clock.end();
    assert_eq!(clock.deadline(&limits).map(|d| d.1), Some(Timeout::Idle));
    clock.on_read();
    assert_eq!(
        clock.deadline(&limits).map(|d| d.1),
        Some(Timeout::HeaderRead)
    );
}
