//! Amazon S3 and S3-compatible services (MinIO, Ceph, moto) through aws-sdk-s3.
//!
//! Writes are multipart uploads driven by the shared writer of
//! [`super::parted`], which buffers, sends parts in parallel, retries and
//! aborts; this module gives it S3's requests: PutObject for an object smaller
//! than one part, then CreateMultipartUpload, UploadPart,
//! CompleteMultipartUpload and AbortMultipartUpload, each with the bucket's
//! storage class and encryption. The SDK's own retries are off, so there is
//! one policy with one budget ([`Retrier`]), and bodies go out in small pieces
//! that each count as movement ([`Moved`]), so a request is timed on its
//! progress: a slow link is never cut and a dead one is seen within
//! `io_timeout`. An unfinished backup leaves no object, and no parts billed
//! forever.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
    StorageClass,
};
use bytes::Bytes;

use super::parted::{Multipart, PartedWriter, Plan, Staging, Words, list_pages};
use super::resume::{self, OpenAt};
use super::retry::{Moved, Retrier};
use super::{Key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::error::{Error, Kind, Result};
use crate::model::{Retry, S3Spec, Sse};

/// S3 allows at most this many parts in one upload.
const MAX_PARTS: u32 = 10_000;
/// Parts sent at one size before the size doubles: with 16 MiB parts the first
/// 1,000 parts hold 16 GiB, and nine doublings reach 5 TiB, S3's object limit.
const PARTS_PER_STEP: u32 = 1_000;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;
/// How long a CompleteMultipartUpload may go without an answer we can see:
/// S3 takes minutes for a large object, keeping the connection alive with
/// whitespace inside a 200 the SDK reads whole.
const COMPLETE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1_000;

#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    client: Client,
    spec: S3Spec,
    retry: Retrier,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The spec's Debug redacts its keys.
        f.debug_struct("S3Storage")
            .field("name", &self.inner.name)
            .field("spec", &self.inner.spec)
            .finish()
    }
}

impl S3Storage {
    /// Builds the client: static keys from the job file, else the standard AWS
    /// chain (environment, profile, web identity, ECS/instance metadata).
    pub async fn connect(name: &str, spec: &S3Spec, retry: Retry) -> Result<S3Storage> {
        use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            // Stalls are ours to judge, by io_timeout: the SDK's own check
            // would cut a body that moved nothing for 20 s, whatever the job
            // file says.
            .stalled_stream_protection(
                aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled(),
            )
            // A connection that cannot be made moves nothing: io_timeout
            // judges it like any stall, so a route that went dark (no RST, no
            // answer) fails as "stopped answering", not after a retry budget
            // of connect timeouts.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(retry.io_timeout + std::time::Duration::from_secs(5))
                    .build(),
            );
        if let Some(region) = &spec.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(keys) = &spec.keys {
            // The job file's keys are read now, when the storage is opened.
            let session_token = match &keys.session_token {
                Some(token) => Some(token.resolve()?.expose().to_owned()),
                None => None,
            };
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                keys.access_key_id.resolve()?.expose(),
                keys.secret_access_key.resolve()?.expose(),
                session_token,
                None,
                "job file",
            ));
        }
        let shared = loader.load().await;
        let retry = Retrier::new(name, retry);
        if spec.keys.is_none() {
            resolve_chain(name, &shared, &retry).await?;
        }
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(spec.path_style);
        if let Some(endpoint) = &spec.endpoint {
            config = config.endpoint_url(endpoint);
            if shared.region().is_none() {
                // S3-compatibles ignore the region, but the signer needs one.
                config = config.region(Region::new("us-east-1"));
            }
        } else if shared.region().is_none() {
            return Err(Error::config(format!(
                "storage {name}: no AWS region for bucket {}",
                spec.bucket
            ))
            .with_hint("set region = \"...\" in the storage, or AWS_REGION in the environment"));
        }
        Ok(S3Storage {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                client: Client::from_conf(config.build()),
                spec: spec.clone(),
                retry,
            }),
        })
    }
}

/// Asks the AWS credential chain for credentials once, before any work, so a
/// host without any fails at once with what was tried, not on its first upload.
async fn resolve_chain(name: &str, shared: &aws_config::SdkConfig, retry: &Retrier) -> Result<()> {
    use aws_credential_types::provider::ProvideCredentials;
    let hint = "give the storage access_key_id_env and secret_access_key_env, or set up the \
                AWS credential chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile \
                (AWS_PROFILE), web identity (IRSA on EKS) or an instance role";
    let Some(provider) = shared.credentials_provider() else {
        return Err(
            Error::config(format!("storage {name}: no AWS credential provider")).with_hint(hint),
        );
    };
    let what = format!("storage {name}: AWS credentials");
    retry
        .run(&what, || async {
            provider.provide_credentials().await.map_err(|e| {
                let message = format!("{what}: {}", causes(&e));
                if credentials_are_missing(&e) {
                    Error::config(message).with_hint(hint)
                } else {
                    Error::storage(message).with_hint(hint).temporary()
                }
            })
        })
        .await
        .map(|_| ())
}

/// Whether a credential failure is one no retry can mend: nothing configured,
/// or a configuration that is wrong (as opposed to a provider that timed out
/// or answered 503).
fn credentials_are_missing(e: &aws_credential_types::provider::error::CredentialsError) -> bool {
    use aws_credential_types::provider::error::CredentialsError as C;
    matches!(e, C::CredentialsNotLoaded(_) | C::InvalidConfiguration(_))
}

/// The messages of an error and its sources, joined, each said once: the
/// SDK's own rendering appends `Debug` dumps that bury the cause.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        source = cause.source();
    }
    text
}

/// The credential failure somewhere in an error's sources, if that is what it is.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a aws_credential_types::provider::error::CredentialsError> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        match &self.spec.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_owned(),
        }
    }

    fn what(&self, action: &str, key: &str) -> String {
        format!("storage {}: {action} {key}", self.name)
    }

    /// Turns an SDK error into ours: the backend's code and message, whether a
    /// retry may help, and a hint for the failures an operator can fix.
    fn error<E>(
        &self,
        what: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let credentials = credentials_error(&err);
        let code = err.code().unwrap_or_default().to_owned();
        let detail = match (&err, err.message()) {
            (SdkError::ServiceError(_), Some(message)) if !code.is_empty() => {
                format!("{code}: {message}")
            }
            (SdkError::ServiceError(_), _) if !code.is_empty() => code.clone(),
            (SdkError::ServiceError(_), _) => match status {
                Some(status) => format!("HTTP {status}"),
                None => "the service returned an error".to_owned(),
            },
            (SdkError::DispatchFailure(_), _) if credentials.is_some() => {
                format!("no usable AWS credentials: {}", causes(&err))
            }
            (SdkError::DispatchFailure(_), _) => {
                format!("could not reach the service: {}", causes(&err))
            }
            (SdkError::TimeoutError(_), _) => "the request timed out".to_owned(),
            (SdkError::ResponseError(_), _) => "the response was cut off or malformed".to_owned(),
            _ => causes(&err),
        };
        let message = format!("{what}: {detail}");
        let temporary = match &err {
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
            _ if credentials.is_some_and(credentials_are_missing) => false,
            SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout() || d.is_other(),
            SdkError::ServiceError(_) => {
                matches!(status, Some(408 | 429 | 500..=599))
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                    )
            }
            _ => false,
        };
        // A missing object is NotFound; a missing bucket is a storage that is
        // set up wrong, which every operation meets, so it stays a storage error.
        let not_found = matches!(code.as_str(), "NoSuchKey" | "NotFound")
            || (status == Some(404) && !matches!(code.as_str(), "NoSuchUpload" | "NoSuchBucket"));
        let mut error = Error::new(
            if not_found {
                Kind::NotFound
            } else {
                Kind::Storage
            },
            message,
        );
        if temporary {
            error = error.temporary();
        }
        let hint = match (code.as_str(), status) {
            ("NoSuchBucket", _) => Some(format!(
                "create the bucket {} or fix `bucket` in the job file",
                self.spec.bucket
            )),
            (
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken",
                _,
            ) => Some(
                "the credentials were rejected: check the access key id and secret (or the \
                 session token's expiry)"
                    .to_owned(),
            ),
            ("AccessDenied", _) | (_, Some(403)) => Some(format!(
                "the credentials lack permission: allow s3:PutObject, s3:GetObject, \
                 s3:ListBucket, s3:DeleteObject and s3:AbortMultipartUpload on bucket {}",
                self.spec.bucket
            )),
            _ if credentials.is_some() => Some(
                "check the AWS credential chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, web identity, \
                 instance role), or give the storage access_key_id_env and secret_access_key_env"
                    .to_owned(),
            ),
            _ if matches!(&err, SdkError::DispatchFailure(_)) => {
                Some("check `endpoint` and the network path to it".to_owned())
            }
            _ => None,
        };
        match hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }

    /// The storage class, encryption and KMS key every new object gets, in the
    /// form the SDK's setters take.
    fn object_options(
        &self,
    ) -> (
        Option<StorageClass>,
        Option<ServerSideEncryption>,
        Option<String>,
    ) {
        let class = self.spec.storage_class.as_deref().map(StorageClass::from);
        let (sse, kms_key) = match &self.spec.sse {
            Some(Sse::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(Sse::Kms { key_id }) => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
            None => (None, None),
        };
        (class, sse, kms_key)
    }

    /// How this storage's objects are cut into parts.
    fn plan(&self) -> Plan {
        Plan {
            storage: self.name.clone(),
            retry: self.retry.clone(),
            part_size: self.spec.part_size,
            parts_per_step: PARTS_PER_STEP,
            max_part_size: MAX_PART_SIZE,
            max_parts: MAX_PARTS,
            in_flight: self.spec.parts_in_flight,
            complete_patience: COMPLETE_PATIENCE,
            staging: Staging::Upload {
                begin: "start upload of",
                abort: "abort upload of",
                left_over: "a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes \
                            such uploads",
            },
            words: Words {
                part: "part",
                part_setting: "part_size",
                complete: "complete upload of",
            },
        }
    }
}

#[async_trait]
impl Multipart for Inner {
    type Upload = String;
    type Part = CompletedPart;

    async fn put_once(&self, what: &str, key: &str, body: Bytes, moved: Moved) -> Result<()> {
        let (class, sse, kms_key) = self.object_options();
        self.client
            .put_object()
            .bucket(&self.spec.bucket)
            .key(self.full_key(key))
            .body(moving(body, moved))
            .set_storage_class(class)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error(what, e))
    }

    async fn begin(&self, what: &str, key: &str) -> Result<String> {
        let (class, sse, kms_key) = self.object_options();
        let output = self
            .client
            .create_multipart_upload()
            .bucket(&self.spec.bucket)
            .key(self.full_key(key))
            .set_storage_class(class)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map_err(|e| self.error(what, e))?;
        output
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::storage(format!("{what}: the service returned no upload id")))
    }

    async fn upload_part(
        &self,
        what: &str,
        key: &str,
        upload_id: &String,
        number: u32,
        body: Bytes,
        moved: Moved,
    ) -> Result<CompletedPart> {
        let output = self
            .client
            .upload_part()
            .bucket(&self.spec.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .part_number(number as i32)
            .body(moving(body, moved))
            .send()
            .await
            .map_err(|e| self.error(what, e))?;
        Ok(CompletedPart::builder()
            .part_number(number as i32)
            .set_e_tag(output.e_tag().map(str::to_owned))
            .set_checksum_crc32(output.checksum_crc32().map(str::to_owned))
            .set_checksum_crc32_c(output.checksum_crc32_c().map(str::to_owned))
            .set_checksum_crc64_nvme(output.checksum_crc64_nvme().map(str::to_owned))
            .set_checksum_sha1(output.checksum_sha1().map(str::to_owned))
            .set_checksum_sha256(output.checksum_sha256().map(str::to_owned))
            .build())
    }

    async fn complete(
        &self,
        what: &str,
        key: &str,
        upload_id: &String,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts.to_vec()))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.spec.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .multipart_upload(upload)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error(what, e))
    }

    async fn abort(&self, what: &str, key: &str, upload_id: &String) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.spec.bucket)
            .key(self.full_key(key))
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error(what, e))
    }

    /// The upload is gone: aborted or completed already, which an abort, or a
    /// completion retried after its answer was lost, takes as it is.
    fn upload_gone(&self, e: &Error) -> bool {
        e.message().contains("NoSuchUpload")
    }

    async fn stored_size(&self, key: &str) -> Option<u64> {
        let head = self
            .client
            .head_object()
            .bucket(&self.spec.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .ok()?;
        head.content_length().and_then(|n| u64::try_from(n).ok())
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn writer(&self, key: &Key) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.clone();
        let plan = inner.plan();
        Ok(Box::new(PartedWriter::new(inner, plan, key.as_str())))
    }

    async fn reader(&self, key: &Key) -> Result<ObjectReader> {
        let source = Arc::new(Get {
            inner: self.inner.clone(),
            key: key.as_str().to_owned(),
        });
        let what = self.inner.what("download", key.as_str());
        resume::open(source, self.inner.retry.clone(), what).await
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<ObjectInfo>> {
        let inner = &self.inner;
        let what = inner.what("list", prefix.as_str());
        let full_prefix = format!("{}/", inner.full_key(prefix.as_str()));
        let strip = inner.spec.prefix.as_ref().map_or(0, |p| p.len() + 1);
        let (what, full_prefix) = (&what, &full_prefix);
        let mut objects = list_pages(&inner.retry, what, |token: Option<String>| async move {
            let page = inner
                .client
                .list_objects_v2()
                .bucket(&inner.spec.bucket)
                .prefix(full_prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| inner.error(what, e))?;
            let mut objects = Vec::new();
            for object in page.contents() {
                let Some(full) = object.key() else { continue };
                // Keys that are not ours (written by another tool) are skipped.
                match full.get(strip..).map(Key::new) {
                    Some(Ok(key)) => objects.push(ObjectInfo {
                        key,
                        size: object.size().unwrap_or(0).max(0) as u64,
                        modified: object.last_modified().and_then(|t| {
                            jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
                        }),
                    }),
                    _ => {
                        tracing::debug!(key = full, "skipping a key that is not a valid object key")
                    }
                }
            }
            let next = match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => Some(next.to_owned()),
                _ => None,
            };
            Ok((objects, next))
        })
        .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let inner = &self.inner;
        let what = inner.what("delete", key.as_str());
        let full = inner.full_key(key.as_str());
        inner
            .retry
            .run(&what, || async {
                inner
                    .client
                    .delete_object()
                    .bucket(&inner.spec.bucket)
                    .key(&full)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| inner.error(&what, e))
            })
            .await
    }

    async fn clean_unfinished(&self, prefix: &Key, before: jiff::Timestamp) -> Result<usize> {
        let inner = &self.inner;
        let what = inner.what("list unfinished uploads under", prefix.as_str());
        let full_prefix = format!("{}/", inner.full_key(prefix.as_str()));
        let before = aws_sdk_s3::primitives::DateTime::from_millis(before.as_millisecond());
        let (what, full_prefix, before) = (&what, &full_prefix, &before);
        // A page is asked for by the key and upload id it ends at.
        type Marker = (String, Option<String>);
        let stale = list_pages(&inner.retry, what, |marker: Option<Marker>| async move {
            let (key_marker, id_marker) = match marker {
                Some((key, id)) => (Some(key), id),
                None => (None, None),
            };
            let page = inner
                .client
                .list_multipart_uploads()
                .bucket(&inner.spec.bucket)
                .prefix(full_prefix)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .send()
                .await
                .map_err(|e| inner.error(what, e))?;
            let mut stale = Vec::new();
            for upload in page.uploads() {
                let old = upload
                    .initiated()
                    .is_some_and(|t| t.as_nanos() < before.as_nanos());
                if let (true, Some(key), Some(id)) = (old, upload.key(), upload.upload_id()) {
                    stale.push((key.to_owned(), id.to_owned()));
                }
            }
            let next = match page.next_key_marker() {
                Some(key) if page.is_truncated() == Some(true) => Some((
                    key.to_owned(),
                    page.next_upload_id_marker().map(str::to_owned),
                )),
                _ => None,
            };
            Ok((stale, next))
        })
        .await?;
        for (key, id) in &stale {
            let what = inner.what("abort the unfinished upload of", key);
            inner
                .retry
                .run(&what, || async {
                    inner
                        .client
                        .abort_multipart_upload()
                        .bucket(&inner.spec.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| inner.error(&what, e))
                })
                .await?;
        }
        Ok(stale.len())
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<()> {
        let inner = &self.inner;
        for batch in keys.chunks(DELETE_BATCH) {
            let what = inner.what(
                &format!("delete {} objects from", batch.len()),
                batch.first().map_or("", |k| k.as_str()),
            );
            let objects = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(inner.full_key(k.as_str()))
                        .build()
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::internal(format!("{what}: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::internal(format!("{what}: {e}")))?;
            let output = inner
                .retry
                .run(&what, || async {
                    inner
                        .client
                        .delete_objects()
                        .bucket(&inner.spec.bucket)
                        .delete(delete.clone())
                        .send()
                        .await
                        .map_err(|e| inner.error(&what, e))
                })
                .await?;
            if let Some(failed) = output.errors().first() {
                return Err(Error::storage(format!(
                    "{what}: {} of them could not be deleted, first {}: {}",
                    output.errors().len(),
                    failed.key().unwrap_or("?"),
                    failed
                        .message()
                        .or(failed.code())
                        .unwrap_or("no reason given")
                )));
            }
        }
        Ok(())
    }
}

/// A request body that says when its bytes go out. It hands hyper a piece at
/// a time, and hyper asks for the next only when it has room to send it, so
/// a piece taken is (give or take the socket's buffers) a piece sent. The
/// SDK still sees the whole body in memory, to sign it and checksum it.
fn moving(body: Bytes, moved: Moved) -> ByteStream {
    let body = aws_smithy_types::body::SdkBody::from(body).map_preserve_contents(move |inner| {
        aws_smithy_types::body::SdkBody::from_body_1_x(MovingBody {
            inner: Box::pin(inner),
            pending: Bytes::new(),
            moved: moved.clone(),
        })
    });
    ByteStream::new(body)
}

/// Pieces small enough that a slow link moves one well within any timeout.
const PIECE: usize = 64 * 1024;

struct MovingBody {
    inner: std::pin::Pin<Box<aws_smithy_types::body::SdkBody>>,
    pending: Bytes,
    moved: Moved,
}

impl http_body::Body for MovingBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(PIECE);
                let piece = self.pending.split_to(n);
                self.moved.tick();
                return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            }
            match self.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// A GET from a byte offset, for the resuming reader.
struct Get {
    inner: Arc<Inner>,
    key: String,
}

#[async_trait]
impl OpenAt for Get {
    async fn open_at(&self, offset: u64) -> Result<ObjectReader> {
        let inner = &self.inner;
        let what = inner.what("download", &self.key);
        let mut get = inner
            .client
            .get_object()
            .bucket(&inner.spec.bucket)
            .key(inner.full_key(&self.key));
        if offset > 0 {
            get = get.range(format!("bytes={offset}-"));
        }
        let output = get.send().await.map_err(|e| inner.error(&what, e))?;
        Ok(Box::pin(output.body.into_async_read()))
    }
}
