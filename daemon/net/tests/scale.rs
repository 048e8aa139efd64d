//! Attaching many tasks at once, as deploying a service with many replicas does: all attachments
//! must succeed with distinct, working addresses. Prints the wall time and the latency of every
//! attach and detach (run with `--nocapture` to see them); timings are not asserted.

mod common;

use std::time::{Duration, Instant};

use common::{Env, ping_from, with_network};

const TASKS: usize = 50;

fn summary(what: &str, wall: Duration, mut latencies: Vec<Duration>) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let avg = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "{what} {n} tasks concurrently: wall {wall:.1} ms; per task avg {avg:.1} ms, \
         min {min:.1} ms, p50 {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms",
        n = latencies.len(),
        wall = ms(wall),
        avg = ms(avg),
        min = ms(latencies[0]),
        p50 = ms(latencies[latencies.len() / 2]),
        p90 = ms(latencies[latencies.len() * 9 / 10]),
        max = ms(latencies[latencies.len() - 1]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_attaches() {
    with_network(8, |env: Env| async move {
        env.net.setup().await.expect("set up the network");
        let start = Instant::now();
        let attaches = (0..TASKS).map(|i| {
            let net = env.net.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let att = net.attach(&format!("scale-{i}")).await;
                (att, t.elapsed())
            })
        });
        let mut attachments = Vec::new();
        let mut latencies = Vec::new();
        for handle in attaches.collect::<Vec<_>>() {
            let (att, took) = handle.await.unwrap();
            attachments.push(att.expect("concurrent attach"));
            latencies.push(took);
        }
        summary("attach", start.elapsed(), latencies);

        let mut ips: Vec<_> = attachments.iter().map(|a| a.ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), TASKS, "addresses handed out twice");
        assert_eq!(env.net.attachments().unwrap().len(), TASKS);
        let (first, last) = (&attachments[0], &attachments[TASKS - 1]);
        assert!(
            ping_from(&first.netns_path, last.ip),
            "first cannot reach last"
        );
        assert!(
            ping_from(&last.netns_path, env.net.gateway()),
            "last cannot reach the gateway"
        );

        let start = Instant::now();
        let detaches = (0..TASKS).map(|i| {
            let net = env.net.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let res = net.detach(&format!("scale-{i}")).await;
                (res, t.elapsed())
            })
        });
        let mut latencies = Vec::new();
        for handle in detaches.collect::<Vec<_>>() {
            let (res, took) = handle.await.unwrap();
            res.expect("concurrent detach");
            latencies.push(took);
        }
        summary("detach", start.elapsed(), latencies);
        assert!(env.net.attachments().unwrap().is_empty());
    })
    .await;
}
