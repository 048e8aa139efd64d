//! Image imports (OCI and Docker archives, compressed or not) and registry pulls, each
//! followed by running a container from the image.

mod common;

use std::path::Path;

use common::{args, log_config, setup, wait_log_lines};
use shoal_containerd::logger::Stream;
use shoal_containerd::{ContainerConfig, Error, ImageInfo, PullOptions, Runtime};
use shoal_tests::images::{ImageBuilder, write_docker_archive, write_oci_archive};
use shoal_tests::registry::Registry;

/// Runs a container that writes to both streams and exits 7; checks code and log.
async fn run_and_check(rt: &Runtime, image: ImageInfo, id: &str, logs: &Path) {
    let mut c = ContainerConfig::new(id, image);
    c.set_process(
        None,
        Some(args(&[
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; echo second; exit 7",
        ])),
    );
    let log_path = logs.join(format!("{id}.log"));
    c.log = Some(log_config(log_path.clone()));
    rt.create(&c).await.unwrap();
    let pid = rt.start(id).await.unwrap();
    assert!(pid > 0);
    let exit = rt.wait(id).await.unwrap();
    assert_eq!(exit.code, 7);
    assert!(!exit.oom_killed);
    let mut lines = wait_log_lines(&log_path, 3);
    // The two streams are read concurrently; order within each stream is what counts.
    lines.sort_by_key(|(s, _)| *s == Stream::Stderr);
    assert_eq!(
        lines,
        vec![
            (Stream::Stdout, "out-line".to_string()),
            (Stream::Stdout, "second".to_string()),
            (Stream::Stderr, "err-line".to_string()),
        ]
    );
    rt.delete(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_oci_and_docker_archives_and_runs_them() {
    let env = setup().await;
    let dir = env.tmp.path();
    let opts = PullOptions::default();
    let cases: Vec<(String, Option<String>)> = vec![
        {
            let p = dir.join("oci.tar");
            let d = write_oci_archive(&p, false, "docker.io/library/bb:latest");
            (format!("oci-archive:{}", p.display()), Some(d))
        },
        {
            let p = dir.join("oci.tar.gz");
            let d = write_oci_archive(&p, true, "docker.io/library/bb:latest");
            (format!("oci-archive:{}", p.display()), Some(d))
        },
        {
            let p = dir.join("oci-plain-layer.tar");
            let d = ImageBuilder::busybox().write_oci_archive_with(&p, false, false, "bb:plain");
            (format!("oci-archive:{}", p.display()), Some(d))
        },
        {
            let p = dir.join("docker.tar");
            write_docker_archive(&p, false, "bb:docker");
            (format!("docker-archive:{}", p.display()), None)
        },
        {
            let p = dir.join("docker.tar.gz");
            write_docker_archive(&p, true, "bb:docker");
            (format!("docker-archive:{}", p.display()), None)
        },
    ];
    for (i, (reference, digest)) in cases.iter().enumerate() {
        let info = env.rt.ensure_image(reference, &opts).await.unwrap();
        assert_eq!(&info.name, reference);
        assert!(info.digest.starts_with("sha256:") && info.digest.len() == 71);
        if let Some(d) = digest {
            assert_eq!(&info.digest, d, "{reference}");
        }
        assert_eq!(info.config.cmd, Some(args(&["/bin/sh"])));
        assert_eq!(info.config.env, args(&["PATH=/bin"]));
        run_and_check(&env.rt, info, &format!("imp-{i}"), &dir.join("logs")).await;
    }
    // Both docker archives hold the same image: same manifest digest.
    let a = env.rt.ensure_image(&cases[3].0, &opts).await.unwrap();
    let b = env.rt.ensure_image(&cases[4].0, &opts).await.unwrap();
    assert_eq!(a.digest, b.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_present_is_not_fetched_again() {
    let env = setup().await;
    let path = env.tmp.path().join("img.tar");
    let first_digest = write_oci_archive(&path, false, "bb:1");
    let reference = format!("oci-archive:{}", path.display());
    let opts = PullOptions::default();
    // Two concurrent calls import once.
    let (a, a2) = tokio::join!(
        env.rt.ensure_image(&reference, &opts),
        env.rt.ensure_image(&reference, &opts)
    );
    let a = a.unwrap();
    assert_eq!(a, a2.unwrap());
    assert_eq!(env.rt.fetch_count(), 1);
    let b = env.rt.ensure_image(&reference, &opts).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        env.rt.fetch_count(),
        1,
        "the second ensure_image imported again"
    );
    // A new connection (a restarted daemon) finds it in containerd, too.
    let rt2 = common::connect(&env.ctd, env.tmp.path()).await;
    assert_eq!(rt2.ensure_image(&reference, &opts).await.unwrap(), a);
    assert_eq!(rt2.fetch_count(), 0);
    // Pinning to the digest it has needs no import either.
    let pinned = rt2
        .ensure_image_pinned(&reference, &first_digest, &opts)
        .await
        .unwrap();
    assert_eq!(pinned.digest, first_digest);
    assert_eq!(rt2.fetch_count(), 0);

    // A rebuilt archive at the same path is imported again and yields the new image.
    std::fs::remove_file(&path).unwrap();
    let second_digest = ImageBuilder::busybox()
        .file("etc/version", "2")
        .write_oci_archive(&path, false, "bb:1");
    assert_ne!(first_digest, second_digest);
    let c = env.rt.ensure_image(&reference, &opts).await.unwrap();
    assert_eq!(c.digest, second_digest);
    assert_eq!(env.rt.fetch_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_registry() {
    let env = setup().await;
    let registry = Registry::start();
    let archive = env.tmp.path().join("bb.tar");
    write_oci_archive(&archive, false, "bb:1");
    let reference = registry.push_oci_archive(&archive, "bb:1");
    let insecure = PullOptions {
        insecure_registries: vec![registry.address()],
    };

    // Without the registry marked insecure, HTTPS fails against the plain-HTTP registry.
    let err = env
        .rt
        .ensure_image(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert!(err.to_string().contains("insecure"), "{err}");

    let info = env.rt.ensure_image(&reference, &insecure).await.unwrap();
    assert_eq!(info.name, reference);
    assert_eq!(info.config.cmd, Some(args(&["/bin/sh"])));
    assert_eq!(env.rt.fetch_count(), 1);
    let again = env.rt.ensure_image(&reference, &insecure).await.unwrap();
    assert_eq!(again, info);
    assert_eq!(env.rt.fetch_count(), 1);
    run_and_check(
        &env.rt,
        info.clone(),
        "pulled",
        &env.tmp.path().join("logs"),
    )
    .await;

    // Pinned to the digest it has locally: no pull.
    let pinned = env
        .rt
        .ensure_image_pinned(&reference, &info.digest, &insecure)
        .await
        .unwrap();
    assert_eq!(
        pinned.name,
        format!("{}/bb@{}", registry.address(), info.digest)
    );
    assert_eq!(env.rt.fetch_count(), 1);

    let missing = format!("{}/nope:1", registry.address());
    let err = env.rt.ensure_image(&missing, &insecure).await.unwrap_err();
    assert!(matches!(err, Error::NotInRegistry { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("image {missing} not found in registry")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_registry_images_are_pulled_by_digest() {
    let env = setup().await;
    let registry = Registry::start();
    let archive = env.tmp.path().join("bb.tar");
    let digest = write_oci_archive(&archive, false, "bb:1");
    let reference = registry.push_oci_archive(&archive, "bb:1");
    let insecure = PullOptions {
        insecure_registries: vec![registry.address()],
    };
    // skopeo keeps an OCI manifest as it is, so the registry serves the archive's digest.
    let info = env
        .rt
        .ensure_image_pinned(&reference, &digest, &insecure)
        .await
        .unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(env.rt.fetch_count(), 1);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = env
        .rt
        .ensure_image_pinned(&reference, &wrong, &insecure)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotInRegistry { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem() {
    let env = setup().await;
    let opts = PullOptions::default();
    let err = env
        .rt
        .ensure_image("docker-archive:/nonexistent/x.tar", &opts)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "image docker-archive:/nonexistent/x.tar: no such file"
    );
    let bad = env.tmp.path().join("bad.tar");
    std::fs::write(&bad, b"not a tar at all").unwrap();
    let err = env
        .rt
        .ensure_image(&format!("oci-archive:{}", bad.display()), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidImage { .. }), "{err}");

    let err = Runtime::connect(Path::new("/nonexistent/containerd.sock"), "shoal")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot connect to containerd at /nonexistent/containerd.sock: ")
            && msg.ends_with("(is containerd running?)"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_listed_with_their_size_and_removed_with_their_content() {
    let env = setup().await;
    let a_path = env.tmp.path().join("a.tar");
    let b_path = env.tmp.path().join("b.tar");
    write_oci_archive(&a_path, false, "bb:a");
    ImageBuilder::busybox()
        .file("etc/version", "b")
        .write_oci_archive(&b_path, false, "bb:b");
    let opts = PullOptions::default();
    let a_ref = format!("oci-archive:{}", a_path.display());
    let b_ref = format!("oci-archive:{}", b_path.display());
    let a = env.rt.ensure_image(&a_ref, &opts).await.unwrap();
    let b = env.rt.ensure_image(&b_ref, &opts).await.unwrap();
    let a_pinned = env
        .rt
        .ensure_image_pinned(&a_ref, &a.digest, &opts)
        .await
        .unwrap();

    let list = env.rt.list_images().await.unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    let mut want = vec![a.name.as_str(), a_pinned.name.as_str(), b.name.as_str()];
    want.sort();
    assert_eq!(names, want);
    for i in &list {
        assert!(i.managed, "{} was written by shoal: {i:?}", i.name);
        // Manifest, config and one busybox layer at least.
        assert!(i.blobs.len() >= 3 && i.size() > 100_000, "{i:?}");
    }
    let of = |name: &str| list.iter().find(|i| i.name == name).unwrap().clone();
    assert_eq!(of(&a.name).digest, a.digest);
    assert_eq!(of(&a_pinned.name).blobs, of(&a.name).blobs);

    // Removing both records of A leaves B whole and runnable; removing again finds nothing.
    assert!(env.rt.remove_image(&a.name).await.unwrap());
    assert!(env.rt.remove_image(&a_pinned.name).await.unwrap());
    assert!(!env.rt.remove_image(&a.name).await.unwrap());
    let list = env.rt.list_images().await.unwrap();
    assert_eq!(
        list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        [b.name.as_str()]
    );
    run_and_check(&env.rt, b.clone(), "gc-b", env.tmp.path()).await;
    // Importing A again really imports.
    let before = env.rt.fetch_count();
    env.rt.ensure_image(&a_ref, &opts).await.unwrap();
    assert_eq!(env.rt.fetch_count(), before + 1);
}
