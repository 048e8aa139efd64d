//! Container lifecycle against a real containerd: process settings, mounts, limits, OOM,
//! stop with grace, adoption by a new connection, idempotent delete, exit events, journald.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{args, log_config, setup, wait_log_lines};
use shoal_containerd::logger::Stream;
use shoal_containerd::{
    ContainerConfig, ContainerStatus, HostEntry, ImageInfo, Mount, MountKind, PullOptions,
    Resources, Runtime,
};
use shoal_tests::images::{IGNORES_SIGTERM, ImageBuilder, LONG_RUNNING};

async fn busybox(rt: &Runtime, dir: &std::path::Path) -> ImageInfo {
    let path = dir.join("bb.tar");
    ImageBuilder::busybox()
        .working_dir("/home/app")
        .env(&["PATH=/bin", "FROM_IMAGE=yes", "OVERRIDE=image"])
        .write_oci_archive(&path, false, "bb:test");
    rt.ensure_image(
        &format!("oci-archive:{}", path.display()),
        &PullOptions::default(),
    )
    .await
    .unwrap()
}

/// Runs `c` to completion and returns (exit code, stdout lines).
async fn run(
    rt: &Runtime,
    mut c: ContainerConfig,
    dir: &std::path::Path,
    lines: usize,
) -> (i32, Vec<String>) {
    let log = dir.join(format!("{}.log", c.id));
    c.log = Some(log_config(log.clone()));
    rt.create(&c).await.unwrap();
    rt.start(&c.id).await.unwrap();
    let exit = rt.wait(&c.id).await.unwrap();
    let out = wait_log_lines(&log, lines)
        .into_iter()
        .map(|(s, t)| format!("{}:{t}", s.as_str()))
        .collect();
    rt.delete(&c.id).await.unwrap();
    (exit.code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_env_cwd_user_and_hostname() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    assert_eq!(image.config.working_dir, "/home/app");

    let script = "echo \"$FROM_IMAGE $OVERRIDE $ADDED $(pwd) $(id -u):$(id -g) $(hostname) $(cat /etc/hostname)\"; id -G; grep db.internal /etc/hosts";
    let mut c = ContainerConfig::new("proc-a", image.clone());
    c.set_process(None, Some(args(&["sh", "-c", script])));
    c.set_env(&args(&["OVERRIDE=service", "ADDED=1"]));
    c.user = "app".into();
    c.hostname = "web-1".into();
    c.hosts = vec![HostEntry {
        ip: "10.0.0.5".parse().unwrap(),
        names: vec!["db.internal".into(), "db".into()],
    }];
    let (code, out) = run(&env.rt, c, dir, 3).await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(
        out[0],
        "stdout:yes service 1 /home/app 1000:1000 web-1 web-1"
    );
    let groups: Vec<&str> = out[1].trim_start_matches("stdout:").split(' ').collect();
    assert!(
        groups.contains(&"1000") && groups.contains(&"10"),
        "{out:?}"
    );
    assert_eq!(out[2], "stdout:10.0.0.5\tdb.internal db");

    // Numeric user and group, working directory override, entrypoint override.
    let mut c = ContainerConfig::new("proc-b", image.clone());
    c.set_process(
        Some(args(&["/bin/sh", "-c"])),
        Some(args(&["echo $(id -u):$(id -g) $(pwd)"])),
    );
    c.user = "33:44".into();
    c.cwd = "/tmp".into();
    let (code, out) = run(&env.rt, c, dir, 1).await;
    assert_eq!(code, 0);
    assert_eq!(out, vec!["stdout:33:44 /tmp"]);

    // An unknown user name is an error naming it.
    let mut c = ContainerConfig::new("proc-c", image);
    c.user = "nosuchuser".into();
    let err = env.rt.create(&c).await.unwrap_err();
    assert!(
        err.to_string().contains("user nosuchuser not found"),
        "{err}"
    );
    // The failed create left nothing behind: the id can be used again.
    c.user = "root".into();
    c.set_process(None, Some(args(&["true"])));
    let (code, _) = run(&env.rt, c, dir, 0).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_volumes_tmpfs_and_read_only_rootfs() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    let host_dir = dir.join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello"), "from host\n").unwrap();

    let script = "cat /ro/hello; echo v > /data/written; echo t > /scratch/t && echo tmpfs-ok; \
                  (touch /rootfile) 2>/dev/null && echo rootfs-writable || echo rootfs-readonly; \
                  (echo x > /ro/new) 2>/dev/null && echo ro-writable || echo ro-readonly; \
                  cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes \
                      /sys/fs/cgroup/pids/pids.max";
    let mut c = ContainerConfig::new("mounts", image);
    c.set_process(None, Some(args(&["sh", "-c", script])));
    c.read_only_rootfs = true;
    c.mounts = vec![
        Mount {
            kind: MountKind::Bind {
                source: host_dir.clone(),
            },
            target: "/ro".into(),
            read_only: true,
        },
        Mount {
            kind: MountKind::Volume {
                name: "appdata".into(),
            },
            target: "/data".into(),
            read_only: false,
        },
        Mount {
            kind: MountKind::Tmpfs {
                size: Some(1 << 20),
            },
            target: "/scratch".into(),
            read_only: false,
        },
    ];
    c.resources = Resources {
        nano_cpus: Some(500_000_000),
        memory_bytes: Some(64 << 20),
        pids: Some(64),
    };
    let (code, out) = run(&env.rt, c, dir, 7).await;
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(
        out,
        vec![
            "stdout:from host",
            "stdout:tmpfs-ok",
            "stdout:rootfs-readonly",
            "stdout:ro-readonly",
            "stdout:50000",
            "stdout:67108864",
            "stdout:64",
        ]
    );
    let written = std::fs::read_to_string(dir.join("volumes/appdata/written")).unwrap();
    assert_eq!(written, "v\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_is_reported() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    let mut c = ContainerConfig::new("oom", image);
    // Doubling a shell variable outgrows 16 MiB within a few rounds.
    c.set_process(
        None,
        Some(args(&[
            "sh",
            "-c",
            "a=xxxxxxxx; while true; do a=\"$a$a\"; done",
        ])),
    );
    c.resources.memory_bytes = Some(16 << 20);
    env.rt.create(&c).await.unwrap();
    env.rt.start("oom").await.unwrap();
    let exit = env.rt.wait("oom").await.unwrap();
    assert_eq!(exit.code, 137, "{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
    let listed = env.rt.list().await.unwrap();
    let state = listed.iter().find(|s| s.id == "oom").unwrap();
    assert_eq!(state.status, ContainerStatus::Stopped);
    assert!(state.exit.as_ref().unwrap().oom_killed);
    env.rt.delete("oom").await.unwrap();

    // A normal exit is not an OOM kill.
    let image = busybox(&env.rt, dir).await;
    let mut c = ContainerConfig::new("no-oom", image);
    c.set_process(None, Some(args(&["sh", "-c", "exit 137"])));
    c.resources.memory_bytes = Some(16 << 20);
    env.rt.create(&c).await.unwrap();
    env.rt.start("no-oom").await.unwrap();
    let exit = env.rt.wait("no-oom").await.unwrap();
    assert_eq!(exit.code, 137);
    assert!(!exit.oom_killed);
    env.rt.delete("no-oom").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_sigterm_then_kills() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    for (id, cmd) in [("polite", LONG_RUNNING), ("stubborn", IGNORES_SIGTERM)] {
        let mut c = ContainerConfig::new(id, image.clone());
        c.set_process(None, Some(args(cmd)));
        env.rt.create(&c).await.unwrap();
        env.rt.start(id).await.unwrap();
    }
    // Give the shells time to install their traps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let polite = env
        .rt
        .stop("polite", libc::SIGTERM, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(polite.code, 0, "the trap exits 0 on SIGTERM: {polite:?}");
    let stubborn = env
        .rt
        .stop("stubborn", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        stubborn.code, 137,
        "SIGKILL after the grace period: {stubborn:?}"
    );
    // Stopping a stopped task reports the same exit.
    let again = env
        .rt
        .stop("polite", libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.code, 0);
    for id in ["polite", "stubborn"] {
        env.rt.delete(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_adopts_running_tasks() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    let mut exits = env.rt.subscribe_exits();
    let mut c = ContainerConfig::new("adopt", image.clone());
    c.set_process(None, Some(args(LONG_RUNNING)));
    c.labels = BTreeMap::from([("io.shoal.task".to_string(), "t-1".to_string())]);
    let log = dir.join("adopt.log");
    c.log = Some(log_config(log.clone()));
    env.rt.create(&c).await.unwrap();
    let pid = env.rt.start("adopt").await.unwrap();
    // A created-but-not-started container shows up too.
    let created = ContainerConfig::new("idle", image);
    env.rt.create(&created).await.unwrap();

    // The "daemon" restarts: a brand-new connection.
    let rt2 = common::connect(&env.ctd, dir).await;
    let listed = rt2.list().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["adopt", "idle"]);
    assert_eq!(listed[0].status, ContainerStatus::Running);
    assert_eq!(listed[0].pid, Some(pid));
    assert_eq!(
        listed[0].labels.get("io.shoal.task").map(String::as_str),
        Some("t-1")
    );
    assert_eq!(listed[1].status, ContainerStatus::Created);
    assert_eq!(listed[1].pid, None);

    let waiter = {
        let rt2 = rt2.clone();
        tokio::spawn(async move { rt2.wait("adopt").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt2.kill("adopt", libc::SIGTERM, false).await.unwrap();
    let exit = waiter.await.unwrap().unwrap();
    assert_eq!(exit.code, 0);
    let event = tokio::time::timeout(Duration::from_secs(60), exits.recv())
        .await
        .expect("an exit event within a minute")
        .expect("the event stream stays open");
    assert_eq!(event.container_id, "adopt");
    assert_eq!(event.exit.code, 0);

    // start() on a stopped task replaces it; the logger keeps appending to the same file.
    rt2.start("adopt").await.unwrap();
    rt2.stop("adopt", libc::SIGKILL, Duration::from_secs(30))
        .await
        .unwrap();

    for id in ["adopt", "idle"] {
        rt2.delete(id).await.unwrap();
        rt2.delete(id).await.unwrap();
    }
    rt2.delete("never-existed").await.unwrap();
    assert!(rt2.list().await.unwrap().is_empty());
    assert!(!dir.join("run/adopt").exists());
    let err = rt2.wait("adopt").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_ahead_waits_unstarted_then_starts_or_is_deleted() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    for id in ["ahead", "dropped"] {
        let mut c = ContainerConfig::new(id, image.clone());
        c.set_process(None, Some(sh("echo ran >> /tmp/marker; exec sleep 600")));
        c.log = Some(log_config(dir.join(format!("{id}.log"))));
        env.rt.create(&c).await.unwrap();
        env.rt.create_task(id).await.unwrap();
        // Idempotent: a second call finds the task and leaves it as it is.
        env.rt.create_task(id).await.unwrap();
    }
    let listed = env.rt.list().await.unwrap();
    for s in &listed {
        assert_eq!(s.status, ContainerStatus::Created, "{s:?}");
        assert!(
            s.pid.is_some_and(|p| p > 0),
            "runc's created container: {s:?}"
        );
    }
    assert_eq!(listed.len(), 2);

    // Start finds the created task and only starts it; the process runs once.
    let pid = env.rt.start("ahead").await.unwrap();
    assert_eq!(env.rt.start("ahead").await.unwrap(), pid);
    env.rt.create_task("ahead").await.unwrap();
    let out = env
        .rt
        .exec(
            "ahead",
            &sh("cat /tmp/marker"),
            Duration::from_secs(30),
            4096,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(String::from_utf8_lossy(&out.output).trim(), "ran");

    // A task created but never started is deleted without waiting for a stop grace period.
    let t0 = std::time::Instant::now();
    env.rt.delete("dropped").await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "deleting an unstarted task took {:?}",
        t0.elapsed()
    );
    env.rt.delete("ahead").await.unwrap();
    assert!(env.rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_journald_when_present() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    let socket_path = dir.join("journal.sock");
    let journal = UnixDatagram::bind(&socket_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut c = ContainerConfig::new("journal", image);
    c.set_process(
        None,
        Some(args(&["sh", "-c", "echo to-journal; echo bad >&2"])),
    );
    let log = dir.join("journal.log");
    let mut lc = log_config(log.clone());
    lc.journal_socket = Some(socket_path);
    lc.name = "web.1.abc".into();
    lc.service = "web".into();
    lc.task = "abc".into();
    c.log = Some(lc);
    env.rt.create(&c).await.unwrap();
    env.rt.start("journal").await.unwrap();
    assert_eq!(env.rt.wait("journal").await.unwrap().code, 0);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        let n = journal
            .recv(&mut buf)
            .expect("a journal datagram within a minute");
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    got.sort();
    let stdout = got
        .iter()
        .find(|d| d.contains("MESSAGE=to-journal\n"))
        .expect("stdout line");
    let stderr = got
        .iter()
        .find(|d| d.contains("MESSAGE=bad\n"))
        .expect("stderr line");
    for field in [
        "CONTAINER_ID=journal\n",
        "CONTAINER_NAME=web.1.abc\n",
        "SHOAL_SERVICE=web\n",
        "SHOAL_TASK_ID=abc\n",
    ] {
        assert!(stdout.contains(field), "{field} missing in {stdout:?}");
    }
    assert!(stdout.contains("PRIORITY=6\n"));
    assert!(stderr.contains("PRIORITY=3\n"));
    let lines = wait_log_lines(&log, 2);
    assert!(lines.contains(&(Stream::Stdout, "to-journal".to_string())));
    assert!(lines.contains(&(Stream::Stderr, "bad".to_string())));
    env.rt.delete("journal").await.unwrap();
}

fn sh(script: &str) -> Vec<String> {
    args(&["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_returns_all_output_written_up_to_the_exit() {
    let env = setup().await;
    let dir = env.tmp.path();
    let image = busybox(&env.rt, dir).await;
    let mut c = ContainerConfig::new("exec-out", image);
    c.set_process(None, Some(args(LONG_RUNNING)));
    env.rt.create(&c).await.unwrap();
    env.rt.start("exec-out").await.unwrap();
    let timeout = Duration::from_secs(30);
    // Output written the moment before the exit, on both streams: every byte arrives, each
    // time (the exec is removed only once the shim has copied it all).
    for round in 0..20 {
        let out = env
            .rt
            .exec(
                "exec-out",
                &sh(&format!("echo out-{round}; echo err-{round} >&2; exit 3")),
                timeout,
                4096,
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(3), "round {round}");
        // Two pipes copied apart: the lines may come in either order.
        let text = String::from_utf8_lossy(&out.output).into_owned();
        let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [format!("err-{round}\n"), format!("out-{round}\n")],
            "round {round}: {text:?}"
        );
    }
    // More than a pipe holds (64 KiB): only the last `keep` bytes are kept, and they are the last.
    let out = env
        .rt
        .exec(
            "exec-out",
            &sh("i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done; printf end"),
            timeout,
            20,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    let all: String = (0..20000)
        .map(|i| format!("line-{i}\n"))
        .collect::<String>()
        + "end";
    assert_eq!(String::from_utf8_lossy(&out.output), all[all.len() - 20..]);
    // A command that outlives its timeout is killed and reported as such.
    let out = env
        .rt
        .exec(
            "exec-out",
            &sh("echo started; sleep 30"),
            Duration::from_millis(300),
            4096,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, None);
    assert_eq!(String::from_utf8_lossy(&out.output), "started\n");
    env.rt
        .stop("exec-out", libc::SIGKILL, Duration::from_secs(1))
        .await
        .unwrap();
    env.rt.delete("exec-out").await.unwrap();
}
