//! Running a command inside a running container (`Tasks.Exec`), as healthchecks do: the
//! container's own process settings (user, environment, working directory, capabilities) with
//! other arguments, its output read from a FIFO and only its last bytes kept.

use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, KillRequest, StartRequest, WaitRequest,
};
use tokio::io::AsyncReadExt;

use crate::Runtime;
use crate::error::{Error, Result};

/// How one exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; `None` when it ran past its timeout and was killed.
    pub exit_code: Option<i32>,
    /// The last `keep` bytes of its stdout and stderr, interleaved.
    pub output: Vec<u8>,
}

impl Runtime {
    /// Runs `args` in the running container `id`, killing it after `timeout`. Keeps the last
    /// `keep` bytes of its output. The exec process is removed from containerd afterwards,
    /// also when this future is dropped half-way (in the background).
    pub async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
        keep: usize,
    ) -> Result<ExecOutput> {
        let container = self.container(id).await?;
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| Error::InvalidConfig {
                id: id.to_string(),
                reason: "the container has no readable runtime spec".into(),
            })?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        let Some(obj) = process.as_object_mut() else {
            return Err(Error::InvalidConfig {
                id: id.to_string(),
                reason: "the container's runtime spec has no process".into(),
            });
        };
        obj.insert("args".into(), serde_json::json!(args));
        obj.insert("terminal".into(), serde_json::Value::Bool(false));
        let process_bytes = serde_json::to_vec(&process).map_err(|e| Error::InvalidConfig {
            id: id.to_string(),
            reason: format!("cannot encode the exec process: {e}"),
        })?;

        let exec_id = format!(
            "health-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let dir = tempfile::Builder::new()
            .prefix("shoal-exec-")
            .tempdir_in(&self.dirs().tmp_dir)
            .or_else(|_| tempfile::Builder::new().prefix("shoal-exec-").tempdir())
            .map_err(|e| {
                Error::io(
                    "cannot create a directory in",
                    self.dirs().tmp_dir.clone(),
                    e,
                )
            })?;
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Error::io("cannot create", fifo.clone(), std::io::Error::from(e)))?;
        // Read-write, so that the reader never sees end-of-file before the shim opens it.
        let mut reader = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .map_err(|e| Error::io("cannot open", fifo.clone(), e))?;
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        // Reads until told to stop, then takes what is still in the FIFO and ends. The stop
        // comes once containerd has removed the exec, which waits for the shim to have copied
        // all of the output into the FIFO: so nothing is lost and nothing is waited for.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let collect = {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let push = |bytes: &[u8]| {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    kept.extend_from_slice(bytes);
                    if kept.len() > 2 * keep.max(1) {
                        let cut = kept.len() - keep;
                        kept.drain(..cut);
                    }
                };
                loop {
                    tokio::select! {
                        read = reader.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => push(&buf[..n]),
                        },
                        _ = &mut stop_rx => break,
                    }
                }
                while let Ok(n @ 1..) = reader.try_read(&mut buf) {
                    push(&buf[..n]);
                }
            })
        };
        let mut cleanup = ExecCleanup {
            rt: self.clone(),
            id: id.to_string(),
            exec_id: exec_id.clone(),
            collect: collect.abort_handle(),
            done: false,
        };

        let stdio = fifo.to_string_lossy().into_owned();
        self.tasks()
            .exec(self.request(ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: stdio.clone(),
                stderr: stdio,
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: process_bytes,
                }),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(|s| Error::grpc("Tasks.Exec", format!("task {id}"), s))?;
        let wait = {
            let rt = self.clone();
            let (id, exec_id) = (id.to_string(), exec_id.clone());
            tokio::spawn(async move {
                rt.tasks()
                    .wait(rt.request(WaitRequest {
                        container_id: id,
                        exec_id,
                    }))
                    .await
                    .map(|r| r.into_inner().exit_status)
            })
        };
        let _abort_wait = AbortOnDrop(wait.abort_handle());
        self.tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(|s| Error::grpc("Tasks.Start", format!("exec in task {id}"), s))?;
        let mut wait = std::pin::pin!(wait);
        let exit_code = match tokio::time::timeout(timeout, &mut wait).await {
            Ok(Ok(Ok(code))) => Some(code as i32),
            Ok(Ok(Err(s))) => {
                return Err(Error::grpc("Tasks.Wait", format!("exec in task {id}"), s));
            }
            Ok(Err(e)) => {
                return Err(Error::InvalidConfig {
                    id: id.to_string(),
                    reason: format!("waiting for the exec stopped: {e}"),
                });
            }
            Err(_) => {
                let _ = self
                    .tasks()
                    .kill(self.request(KillRequest {
                        container_id: id.to_string(),
                        exec_id: exec_id.clone(),
                        signal: libc::SIGKILL as u32,
                        all: false,
                    }))
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut wait).await;
                None
            }
        };
        // Removing the exec waits for the shim's copy of its output; then the reader takes
        // what is left.
        let _ = self.delete_exec(id, &exec_id).await;
        cleanup.done = true;
        let _ = stop_tx.send(());
        let _ = collect.await;
        let mut output = std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()));
        if output.len() > keep {
            output.drain(..output.len() - keep);
        }
        Ok(ExecOutput { exit_code, output })
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        self.tasks()
            .delete_process(self.request(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map(|_| ())
            .map_err(|s| Error::grpc("Tasks.DeleteProcess", format!("exec in task {id}"), s))
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the exec process when the exec future is dropped before it finished.
struct ExecCleanup {
    rt: Runtime,
    id: String,
    exec_id: String,
    collect: tokio::task::AbortHandle,
    /// The exec finished and was removed: nothing to clean up.
    done: bool,
}

impl Drop for ExecCleanup {
    fn drop(&mut self) {
        self.collect.abort();
        if self.done {
            return;
        }
        let (rt, id, exec_id) = (self.rt.clone(), self.id.clone(), self.exec_id.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = rt
                    .tasks()
                    .kill(rt.request(KillRequest {
                        container_id: id.clone(),
                        exec_id: exec_id.clone(),
                        signal: libc::SIGKILL as u32,
                        all: false,
                    }))
                    .await;
                let _ = rt.delete_exec(&id, &exec_id).await;
            });
        }
    }
}
