//! A private `dbus-daemon` configured like Debian's system bus (default deny for method calls
//! and name ownership) that loads a policy directory through `<includedir>`, plus helpers to run
//! clients as unprivileged users.
//!
//! ```no_run
//! let bus = shoal_tests::dbus::DbusDaemon::start_with_shipped_policy().unwrap();
//! // serve on bus.address(), or give DBUS_SYSTEM_BUS_ADDRESS=bus.address() to a child process
//! ```

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The policy file shipped in `systemd/` of the workspace.
pub fn shipped_policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("systemd")
        .join("org.shoal.Shoal1.conf")
}

/// A running `dbus-daemon`; killed and cleaned up on drop.
pub struct DbusDaemon {
    child: Child,
    dir: tempfile::TempDir,
    address: String,
}

fn bus_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-dbus-")
        .tempdir()
        .context("failed to create a temporary directory for dbus-daemon")?;
    // Unprivileged test clients must reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .context("failed to make the bus directory world-readable")?;
    Ok(dir)
}

fn system_like_config(socket: &Path, policy_dir: &Path) -> String {
    // Debian 12's /usr/share/dbus-1/system.conf default policy, without the parts that need a
    // real system (user switch, fork, pid file, service helper, syslog).
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>{policy}</includedir>
</busconfig>
"#,
        socket = socket.display(),
        policy = policy_dir.display(),
    )
}

impl DbusDaemon {
    /// Start a system-like bus whose config includes every `*.conf` in `policy_dir`. Returns
    /// once the daemon prints its address (it accepts connections from then on).
    pub fn start(policy_dir: &Path) -> Result<DbusDaemon> {
        DbusDaemon::start_in(bus_dir()?, policy_dir)
    }

    fn start_in(dir: tempfile::TempDir, policy_dir: &Path) -> Result<DbusDaemon> {
        let socket = dir.path().join("bus.sock");
        let policy_dir = policy_dir
            .canonicalize()
            .with_context(|| format!("policy directory {} not found", policy_dir.display()))?;
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, system_like_config(&socket, &policy_dir))
            .with_context(|| format!("failed to write {}", config.display()))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--address=unix:path={}", socket.display()))
            .arg("--nofork")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to run dbus-daemon (install the dbus-daemon package)")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut r = BufReader::new(stdout);
            let res = r.read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
            // Keep draining so the daemon never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let printed = rx.recv_timeout(Duration::from_secs(60));
        let address = match printed {
            Ok(Ok(line)) if !line.trim().is_empty() => line.trim().to_string(),
            other => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let _ = child.wait();
                bail!("dbus-daemon did not start ({other:?}): {err}");
            }
        };
        // dbus-daemon prints the address with a guid; the socket path is what clients need.
        let address = address.split(',').next().unwrap_or(&address).to_string();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !line.contains("Failed to set fd limit") {
                        eprintln!("dbus-daemon: {line}");
                    }
                }
            });
        }
        Ok(DbusDaemon {
            child,
            dir,
            address,
        })
    }

    /// Start with a policy directory holding only the given policy file.
    pub fn start_with_policy_file(file: &Path) -> Result<DbusDaemon> {
        let dir = bus_dir()?;
        let policy = dir.path().join("policy.d");
        std::fs::create_dir(&policy)
            .with_context(|| format!("failed to create {}", policy.display()))?;
        let name = file
            .file_name()
            .with_context(|| format!("{} has no file name", file.display()))?;
        std::fs::copy(file, policy.join(name))
            .with_context(|| format!("failed to copy {}", file.display()))?;
        DbusDaemon::start_in(dir, &policy)
    }

    /// Start with the shipped `systemd/org.shoal.Shoal1.conf` as the only policy. Creates the
    /// system group `shoal` first when missing: dbus-daemon ignores rules for unknown groups.
    pub fn start_with_shipped_policy() -> Result<DbusDaemon> {
        ensure_group("shoal")?;
        DbusDaemon::start_with_policy_file(&shipped_policy_file())
    }

    /// `unix:path=/tmp/.../bus.sock`: what `DBUS_SYSTEM_BUS_ADDRESS` should be set to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bus.sock")
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local system user for policy tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
}

fn id_of(kind: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent").args([kind, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split(':').nth(2)?.trim().parse().ok()
}

fn passwd_gid(name: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split(':').nth(3)?.trim().parse().ok()
}

/// The gid of system group `name`, created with `groupadd -r` when missing (needs root).
pub fn ensure_group(name: &str) -> Result<u32> {
    if let Some(gid) = id_of("group", name) {
        return Ok(gid);
    }
    let out = Command::new("groupadd")
        .args(["-r", name])
        .output()
        .context("failed to run groupadd")?;
    // Another test may have created it meanwhile.
    match id_of("group", name) {
        Some(gid) => Ok(gid),
        None => bail!(
            "groupadd -r {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// System user `name` (created with `useradd -r` when missing, with `groups` as supplementary
/// groups; needs root).
pub fn ensure_user(name: &str, groups: &[&str]) -> Result<TestUser> {
    if id_of("passwd", name).is_none() {
        let mut cmd = Command::new("useradd");
        cmd.args(["-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            cmd.arg("-G").arg(groups.join(","));
        }
        let out = cmd.arg(name).output().context("failed to run useradd")?;
        if id_of("passwd", name).is_none() {
            bail!(
                "useradd -r {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let uid = id_of("passwd", name).context("user vanished")?;
    let gid = passwd_gid(name).context("user has no primary group")?;
    Ok(TestUser { uid, gid })
}

/// A user outside group `shoal`: may read, not change.
pub fn reader_user() -> Result<TestUser> {
    ensure_user("shoaltest", &[])
}

/// A user in group `shoal`: may change the cluster. Returns the user and the group's gid.
pub fn operator_user() -> Result<(TestUser, u32)> {
    let gid = ensure_group("shoal")?;
    let user = ensure_user("shoaltest-op", &["shoal"])?;
    // An existing user created before the group may lack the membership.
    let out = Command::new("id")
        .args(["-G", "shoaltest-op"])
        .output()
        .context("failed to run id")?;
    let groups = String::from_utf8_lossy(&out.stdout).to_string();
    if !groups.split_whitespace().any(|g| g == gid.to_string()) {
        let st = Command::new("usermod")
            .args(["-a", "-G", "shoal", "shoaltest-op"])
            .status()
            .context("failed to run usermod")?;
        if !st.success() {
            bail!("usermod -a -G shoal shoaltest-op failed");
        }
    }
    Ok((user, gid))
}

/// `program` run as `user` through `setpriv`, with exactly `groups` as supplementary groups.
pub fn command_as(user: TestUser, groups: &[u32], program: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--").arg(program.as_ref());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_accepts_connections() {
        let bus = DbusDaemon::start_with_shipped_policy().unwrap();
        assert!(bus.address().starts_with("unix:path="), "{}", bus.address());
        let socket = bus.socket();
        assert!(socket.exists());
        std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let pid = bus.child.id();
        drop(bus);
        assert!(
            !Path::new(&format!("/proc/{pid}/status")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .map(|s| s.contains("State:\tZ"))
                    .unwrap_or(true),
            "dbus-daemon must be gone after drop"
        );
    }

    #[test]
    fn bad_policy_dir_is_an_error() {
        let err = DbusDaemon::start(Path::new("/nonexistent/policy"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
