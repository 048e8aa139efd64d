//! Task exit events from containerd's event stream.

use std::time::Duration;

use containerd_client::events::TaskExit;
use containerd_client::services::v1::SubscribeRequest;
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::mpsc;

use crate::Runtime;
use crate::container::{Exit, oom_kills};

/// A container's init process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub container_id: String,
    pub exit: Exit,
}

impl Runtime {
    /// A stream of init-process exits in this namespace.
    ///
    /// A background task subscribes (and re-subscribes after errors, one second apart) until
    /// the receiver is dropped. Events that happen while it is disconnected are lost: treat
    /// them as hints and reconcile with [`Runtime::list`].
    pub fn subscribe_exits(&self) -> mpsc::Receiver<ExitEvent> {
        let (tx, rx) = mpsc::channel(256);
        let rt = self.clone();
        tokio::spawn(async move {
            let filter = format!("namespace=={},topic==\"/tasks/exit\"", rt.namespace);
            loop {
                let mut client = rt.events();
                let subscribe = client.subscribe(rt.request(SubscribeRequest {
                    filters: vec![filter.clone()],
                }));
                // containerd sends no headers until the first event: wait for either.
                let stream = tokio::select! {
                    r = subscribe => r,
                    _ = tx.closed() => return,
                };
                match stream {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            let item = tokio::select! {
                                item = stream.next() => item,
                                _ = tx.closed() => return,
                            };
                            let Some(Ok(envelope)) = item else { break };
                            let Some(any) = envelope.event else { continue };
                            let Ok(exit) = TaskExit::decode(any.value.as_slice()) else {
                                continue;
                            };
                            if exit.id != exit.container_id && !exit.id.is_empty() {
                                continue;
                            }
                            let event = ExitEvent {
                                exit: Exit {
                                    code: exit.exit_status as i32,
                                    oom_killed: oom_kills(&rt.namespace, &exit.container_id) > 0,
                                    exited_at: crate::time::from_timestamp(exit.exited_at.as_ref()),
                                },
                                container_id: exit.container_id,
                            };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(status) => {
                        tracing::debug!(%status, "containerd event subscription failed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}
