//! Content store and leases: writing and reading blobs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest,
};
use containerd_client::services::v1::{
    InfoRequest, ReadContentRequest, WriteAction, WriteContentRequest,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::error::{Error, Result};
use crate::{Runtime, error_chain};

/// Chunk size for `Content.Write` (gRPC messages must stay under 4 MiB).
const CHUNK: usize = 1 << 20;

/// Where the bytes of a blob come from.
pub(crate) enum BlobData {
    Bytes(Vec<u8>),
    File(PathBuf),
    Stream(BoxStream<'static, std::result::Result<bytes::Bytes, std::io::Error>>),
}

/// A unique id for leases and ingest refs.
pub(crate) fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Runtime {
    /// Creates a lease that expires on its own after an hour, so a crash leaks nothing for long.
    pub(crate) async fn create_lease(&self, purpose: &str) -> Result<String> {
        let id = unique(&format!("shoal-{purpose}"));
        let expire = crate::time::rfc3339_nanos(SystemTime::now() + Duration::from_secs(3600));
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        self.leases()
            .create(self.request(LeaseCreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| Error::grpc("Leases.Create", &id, s))?;
        Ok(id)
    }

    pub(crate) async fn delete_lease(&self, id: &str) {
        if let Err(status) = self
            .leases()
            .delete(self.request(LeaseDeleteRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
        {
            tracing::debug!(lease = id, %status, "cannot delete lease; it expires on its own");
        }
    }

    /// True when the content store has the blob.
    pub(crate) async fn blob_exists(&self, digest: &str) -> Result<bool> {
        match self
            .content()
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::grpc("Content.Info", digest, s)),
        }
    }

    /// Reads a whole (small) blob: manifests, indexes, configs.
    pub(crate) async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| Error::grpc("Content.Read", format!("blob {digest}"), s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|s| Error::grpc("Content.Read", format!("blob {digest}"), s))?;
            out.extend_from_slice(&msg.data);
        }
        Ok(out)
    }

    /// Writes a blob under `lease` and commits it with `labels`; a blob that exists already is
    /// left alone. containerd checks the digest and size on commit.
    pub(crate) async fn write_blob(
        &self,
        lease: &str,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        data: BlobData,
    ) -> Result<()> {
        if self.blob_exists(digest).await? {
            return Ok(());
        }
        let reference = unique(&format!("shoal-{digest}"));
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let msg = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total: size,
            expected: digest.to_string(),
            offset,
            data,
            labels: HashMap::new(),
        };
        let first = msg(WriteAction::Write, 0, Vec::new());
        let template = msg(WriteAction::Write, 0, Vec::new());
        let digest_owned = digest.to_string();
        let producer = tokio::spawn(async move {
            let send = |m: WriteContentRequest| {
                let tx = tx.clone();
                async move { tx.send(m).await.is_ok() }
            };
            if !send(first).await {
                return Ok(());
            }
            let mut offset = 0i64;
            let mut push = |chunk: Vec<u8>| {
                let mut m = template.clone();
                m.offset = offset;
                offset += chunk.len() as i64;
                m.data = chunk;
                m
            };
            match data {
                BlobData::Bytes(bytes) => {
                    for chunk in bytes.chunks(CHUNK) {
                        if !send(push(chunk.to_vec())).await {
                            return Ok(());
                        }
                    }
                }
                BlobData::File(path) => {
                    let mut file = tokio::fs::File::open(&path)
                        .await
                        .map_err(|e| Error::io("cannot open blob file", &path, e))?;
                    loop {
                        let mut buf = vec![0u8; CHUNK];
                        let n = read_full(&mut file, &mut buf)
                            .await
                            .map_err(|e| Error::io("cannot read blob file", &path, e))?;
                        if n == 0 {
                            break;
                        }
                        buf.truncate(n);
                        if !send(push(buf)).await {
                            return Ok(());
                        }
                    }
                }
                BlobData::Stream(mut stream) => {
                    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
                    while let Some(item) = stream.next().await {
                        let bytes = item.map_err(|e| Error::Registry {
                            reference: digest_owned.clone(),
                            message: format!("download interrupted: {}", error_chain(&e)),
                        })?;
                        pending.extend_from_slice(&bytes);
                        if pending.len() >= CHUNK && !send(push(std::mem::take(&mut pending))).await
                        {
                            return Ok(());
                        }
                    }
                    if !pending.is_empty() && !send(push(pending)).await {
                        return Ok(());
                    }
                }
            }
            let mut commit = template.clone();
            commit.action = WriteAction::Commit as i32;
            commit.offset = offset;
            commit.labels = labels;
            send(commit).await;
            Ok::<(), Error>(())
        });
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let result = async {
            let mut responses = self
                .content()
                .write(self.leased(outbound, lease))
                .await?
                .into_inner();
            while let Some(resp) = responses.next().await {
                resp?;
            }
            Ok::<(), tonic::Status>(())
        }
        .await;
        let produced = producer.await.map_err(|e| Error::InvalidImage {
            reference: digest.to_string(),
            reason: format!("blob writer stopped: {e}"),
        })?;
        produced?;
        match result {
            Ok(()) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(Error::grpc("Content.Write", format!("blob {digest}"), s)),
        }
    }
}

async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut n = 0;
    while n < buf.len() {
        let k = file.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}
