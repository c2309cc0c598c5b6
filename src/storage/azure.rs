//! Azure Blob Storage through the official `azure_storage_blob` crate.
//!
//! Writes are block blobs, through the shared writer of [`super::parted`]
//! (buffering, blocks in parallel, retries): blocks staged one by one (Put
//! Block), committed by one block list in `finish` (Put Block List). Before the
//! commit nothing is visible under the key, so an aborted or dropped writer
//! leaves nothing (Azure discards uncommitted blocks after a week). An object
//! smaller than one block is a single Put Blob. Every request goes through the
//! shared [`Retrier`]; the SDK's own retries are off. Bodies go out as streams
//! whose every piece counts as movement, so a block is timed on its progress,
//! not as a whole.
//!
//! Credentials: Entra ID (workload identity when its environment is set, else
//! managed identity, then the Azure CLI), a SAS token, a connection string, or
//! the account key. The crate cannot sign requests with a key, so with a key
//! this module signs short-lived account SAS tokens locally and renews them
//! before they expire; the key itself never leaves the process.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, NoFormat, RetryOptions, StatusCode, Url};
use azure_core::stream::SeekableStream;
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
    BlockLookupList, HttpRange,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Mutex;

use super::parted::{Multipart, PartedWriter, Plan, Staging, Words, list_pages};
use super::resume::{self, OpenAt};
use super::retry::{Moved, Retrier};
use super::{Key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::error::{Error, Kind, Result};
use crate::model::{AzureAuth, AzureSpec, Retry};
use crate::secret::{Problem, Secret};

/// A block blob holds at most 50,000 blocks.
const MAX_BLOCKS: u32 = 50_000;
/// Blocks sent at one size before it doubles: 8 MiB blocks give 39 GiB per
/// step, and nine doublings pass Azure's largest blob.
const BLOCKS_PER_STEP: u32 = 5_000;
const MAX_BLOCK_SIZE: u64 = 4000 << 20;
/// How long a locally signed SAS is valid, and how early it is renewed.
const SAS_LIFETIME: i64 = 2 * 3600;
const SAS_RENEW_BEFORE: i64 = 15 * 60;
/// Names per listing page (Azure's default is 5,000).
const LIST_PAGE: i32 = 1_000;
/// The service version the SAS is signed for.
const SAS_VERSION: &str = "2022-11-02";
/// Azurite's development account, for `UseDevelopmentStorage=true`.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Clone)]
pub struct AzureStorage {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    spec: AzureSpec,
    retry: Retrier,
    access: Access,
}

impl fmt::Debug for AzureStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The spec's Debug redacts its secrets.
        f.debug_struct("AzureStorage")
            .field("name", &self.inner.name)
            .field("spec", &self.inner.spec)
            .finish()
    }
}

/// How requests are authorized.
enum Access {
    /// A client made once: Entra ID, or a SAS token given by the operator.
    Fixed(Arc<BlobContainerClient>),
    /// A client carrying a SAS signed here from the account key, re-made
    /// before the SAS expires.
    Signed {
        account: String,
        key: Secret,
        container_url: Url,
        current: Mutex<Option<(Arc<BlobContainerClient>, jiff::Timestamp)>>,
    },
}

fn client_options() -> BlobContainerClientOptions {
    BlobContainerClientOptions {
        client_options: ClientOptions {
            // One retry policy for every backend: ours.
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        },
        ..BlobContainerClientOptions::default()
    }
}

impl AzureStorage {
    pub fn connect(name: &str, spec: &AzureSpec, retry: Retry) -> Result<AzureStorage> {
        let config = |message: String| Error::config(format!("storage {name}: {message}"));
        let mut account = spec.account.clone();
        let mut endpoint = spec.endpoint.clone();
        // The job file's secrets are read now, when the storage is opened.
        let auth = match &spec.auth {
            AzureAuth::EntraId => Credential::EntraId,
            AzureAuth::SasToken(sas) => Credential::SasToken(sas.resolve()?.clone()),
            AzureAuth::AccountKey(key) => Credential::AccountKey(key.resolve()?.clone()),
            AzureAuth::ConnectionString(text) => {
                let parsed = parse_connection_string(text.resolve()?.expose()).map_err(|e| {
                    config(format!("connection string: {e}")).with_hint(CONNECTION_STRING_HINT)
                })?;
                if account.is_empty() {
                    account = parsed.account.clone();
                }
                endpoint = endpoint.or(Some(parsed.endpoint));
                parsed.auth
            }
        };
        if account.is_empty() {
            return Err(config("no account name".to_owned())
                .with_hint("set account = \"...\" in the storage"));
        }
        let endpoint =
            endpoint.unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let container_url = Url::parse(&format!(
            "{}/{}",
            endpoint.trim_end_matches('/'),
            spec.container
        ))
        .map_err(|e| config(format!("endpoint {endpoint}: {e}")))?;
        let make = |url: Url, credential: Option<Arc<dyn TokenCredential>>| {
            BlobContainerClient::new(url, credential, Some(client_options()))
                // The SDK's message may quote the url, and with it a SAS.
                .map_err(|e| {
                    config(format!(
                        "cannot make a client for {endpoint}: {}",
                        redact(&e.to_string())
                    ))
                })
        };
        let access = match auth {
            Credential::EntraId => {
                if container_url.scheme() != "https" {
                    return Err(config(format!(
                        "Entra ID needs an https endpoint, not {endpoint}"
                    ))
                    .with_hint("use https, or a SAS token or key for a local emulator"));
                }
                Access::Fixed(Arc::new(make(container_url, Some(entra_credential()?))?))
            }
            Credential::SasToken(sas) => {
                let mut url = container_url;
                url.set_query(Some(sas.expose().trim_start_matches('?')));
                Access::Fixed(Arc::new(make(url, None)?))
            }
            Credential::AccountKey(key) => {
                if azure_core::base64::decode(key.expose()).is_err() {
                    return Err(config("the account key is not base64".to_owned())
                        .with_hint("copy key1 or key2 from the storage account's access keys"));
                }
                Access::Signed {
                    account: account.clone(),
                    key,
                    container_url,
                    current: Mutex::new(None),
                }
            }
        };
        Ok(AzureStorage {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                spec: AzureSpec {
                    account,
                    ..spec.clone()
                },
                retry: Retrier::new(name, retry),
                access,
            }),
        })
    }
}

impl AzureStorage {
    /// Whether `text` is a connection string this backend can use: the check
    /// run on `connection_string_*` when it is read, and by `config check`.
    pub fn check_connection_string(text: &str) -> std::result::Result<(), Problem> {
        parse_connection_string(text).map(drop).map_err(|e| {
            Problem::new(format!("not a connection string: {e}")).with_hint(CONNECTION_STRING_HINT)
        })
    }

    /// Creates the container. Not used by backups (operators create containers
    /// with the permissions they choose); the test suite uses it on Azurite.
    #[doc(hidden)]
    pub async fn create_container(&self) -> Result<()> {
        let what = format!(
            "storage {}: create container {}",
            self.inner.name, self.inner.spec.container
        );
        let container = self.inner.container().await?;
        container
            .create(None)
            .await
            .map(|_| ())
            .map_err(|e| self.inner.error(&what, e))
    }
}

/// Workload identity where Kubernetes set it up, else managed identity, then
/// the developer tools (Azure CLI, azd): the order of Azure's own default chain.
fn entra_credential() -> Result<Arc<dyn TokenCredential>> {
    let fail =
        |e: azure_core::Error| Error::config(format!("cannot set up Entra ID credentials: {e}"));
    if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return Ok(azure_identity::WorkloadIdentityCredential::new(None).map_err(fail)?);
    }
    let managed: Arc<dyn TokenCredential> =
        azure_identity::ManagedIdentityCredential::new(None).map_err(fail)?;
    let tools: Arc<dyn TokenCredential> =
        azure_identity::DeveloperToolsCredential::new(None).map_err(fail)?;
    Ok(Arc::new(Chain(vec![managed, tools])))
}

#[derive(Debug)]
struct Chain(Vec<Arc<dyn TokenCredential>>);

#[async_trait]
impl TokenCredential for Chain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let mut failures = Vec::new();
        for credential in &self.0 {
            match credential.get_token(scopes, options.clone()).await {
                Ok(token) => return Ok(token),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!(
                "no Entra ID credential worked (managed identity, then Azure CLI): {}",
                failures.join("; ")
            ),
        ))
    }
}

const CONNECTION_STRING_HINT: &str = "copy it from the portal's \"Access keys\" page: \
     DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=...";

/// How a storage signs in, its secrets read.
enum Credential {
    EntraId,
    SasToken(Secret),
    AccountKey(Secret),
}

struct ConnectionString {
    account: String,
    endpoint: String,
    auth: Credential,
}

fn parse_connection_string(text: &str) -> std::result::Result<ConnectionString, String> {
    let mut fields = std::collections::BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| "a part without '=' (expected Key=Value;...)".to_owned())?;
        fields.insert(k.to_owned(), v.to_owned());
    }
    if fields.get("UseDevelopmentStorage").map(String::as_str) == Some("true") {
        return Ok(ConnectionString {
            account: DEV_ACCOUNT.to_owned(),
            endpoint: format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"),
            auth: Credential::AccountKey(Secret::new(DEV_KEY)),
        });
    }
    let account = fields.get("AccountName").cloned().unwrap_or_default();
    let endpoint = match fields.get("BlobEndpoint") {
        Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
        None => {
            if account.is_empty() {
                return Err("neither AccountName nor BlobEndpoint is set".to_owned());
            }
            let protocol = fields
                .get("DefaultEndpointsProtocol")
                .map_or("https", String::as_str);
            let suffix = fields
                .get("EndpointSuffix")
                .map_or("core.windows.net", String::as_str);
            format!("{protocol}://{account}.blob.{suffix}")
        }
    };
    let auth = match (
        fields.get("AccountKey"),
        fields.get("SharedAccessSignature"),
    ) {
        (Some(key), _) => Credential::AccountKey(Secret::new(key.clone())),
        (None, Some(sas)) => Credential::SasToken(Secret::new(sas.clone())),
        (None, None) => return Err("neither AccountKey nor SharedAccessSignature is set".into()),
    };
    Ok(ConnectionString {
        account,
        endpoint,
        auth,
    })
}

/// An account SAS for blob containers and objects, signed with the account key
/// (https://learn.microsoft.com/rest/api/storageservices/create-account-sas).
fn account_sas(
    account: &str,
    key: &Secret,
    now: jiff::Timestamp,
    expiry: jiff::Timestamp,
    https_only: bool,
) -> Result<String> {
    let fmt = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    // A few minutes back, for clocks that are a little apart.
    let start = fmt(now - jiff::SignedDuration::from_mins(5));
    let expiry = fmt(expiry);
    let (permissions, services, types) = ("rwdlac", "b", "co");
    let protocol = if https_only { "https" } else { "https,http" };
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{types}\n{start}\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n"
    );
    let core_key = azure_core::credentials::Secret::new(key.expose().to_owned());
    let signature = azure_core::hmac::hmac_sha256(&to_sign, &core_key)
        .map_err(|_| Error::config("the account key is not valid base64"))?;
    let mut query = Url::parse("http://x/").map_err(|e| Error::internal(e.to_string()))?;
    query
        .query_pairs_mut()
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", types)
        .append_pair("sp", permissions)
        .append_pair("st", &start)
        .append_pair("se", &expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &signature);
    Ok(query.query().unwrap_or_default().to_owned())
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

    async fn container(&self) -> Result<Arc<BlobContainerClient>> {
        match &self.access {
            Access::Fixed(client) => Ok(client.clone()),
            Access::Signed {
                account,
                key,
                container_url,
                current,
            } => {
                let now = jiff::Timestamp::now();
                let mut current = current.lock().await;
                if let Some((client, expires)) = current.as_ref()
                    && expires.as_second() - now.as_second() > SAS_RENEW_BEFORE
                {
                    return Ok(client.clone());
                }
                let expires = now + jiff::SignedDuration::from_secs(SAS_LIFETIME);
                let https_only = container_url.scheme() == "https";
                let sas = account_sas(account, key, now, expires, https_only)?;
                let mut url = container_url.clone();
                url.set_query(Some(&sas));
                let client =
                    BlobContainerClient::new(url, None, Some(client_options())).map_err(|e| {
                        Error::config(format!("storage {}: {}", self.name, redact(&e.to_string())))
                    })?;
                let client = Arc::new(client);
                *current = Some((client.clone(), expires));
                Ok(client)
            }
        }
    }

    /// Turns an SDK error into ours: status and error code, whether a retry
    /// may help, a hint for what an operator can fix, and never a SAS.
    fn error(&self, what: &str, err: azure_core::Error) -> Error {
        use azure_core::error::ErrorKind as K;
        let (status, code) = match err.kind() {
            K::HttpResponse {
                status, error_code, ..
            } => (Some(*status), error_code.clone()),
            _ => (None, None),
        };
        let detail = match (status, &code) {
            (Some(status), Some(code)) => format!("{code} (HTTP {})", u16::from(status)),
            (Some(status), None) => format!("HTTP {}", u16::from(status)),
            _ => redact(&format!("{err}")),
        };
        let message = format!("{what}: {detail}");
        let code = code.unwrap_or_default();
        let temporary = match err.kind() {
            K::HttpResponse { status, .. } => {
                let s = u16::from(*status);
                s == 408 || s == 429 || s >= 500
            }
            K::Io | K::Connection => true,
            _ => false,
        };
        let kind = match (status, code.as_str()) {
            (_, "ContainerNotFound") => Kind::Storage,
            (Some(StatusCode::NotFound), _) => Kind::NotFound,
            _ => Kind::Storage,
        };
        let mut error = Error::new(kind, message);
        if temporary {
            error = error.temporary();
        }
        let hint = match (status.map(u16::from), code.as_str()) {
            (_, "ContainerNotFound") => Some(format!(
                "create the container {} in account {}, or fix `container` in the job file",
                self.spec.container, self.spec.account
            )),
            (Some(401 | 403), _) => Some(
                "the credential was refused: check the account key or SAS token (and its \
                 expiry and permissions r,w,d,l), or, with Entra ID, that the identity has \
                 the role \"Storage Blob Data Contributor\" on the container"
                    .to_owned(),
            ),
            _ if matches!(err.kind(), K::Credential) => Some(
                "no Entra ID token: run on Azure with a managed identity, set up workload \
                 identity, or `az login`; or give access_key_env / sas_token_env"
                    .to_owned(),
            ),
            _ if matches!(err.kind(), K::Io | K::Connection) => {
                Some("check `endpoint` and the network path to it".to_owned())
            }
            _ => None,
        };
        match hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }

    /// How this storage's objects are cut into blocks.
    fn plan(&self) -> Plan {
        Plan {
            storage: self.name.clone(),
            retry: self.retry.clone(),
            part_size: self.spec.block_size,
            parts_per_step: BLOCKS_PER_STEP,
            max_part_size: MAX_BLOCK_SIZE,
            max_parts: MAX_BLOCKS,
            in_flight: self.spec.blocks_in_flight,
            // A block list commits at once.
            complete_patience: std::time::Duration::ZERO,
            staging: Staging::Uncommitted,
            words: Words {
                part: "block",
                part_setting: "block_size",
                complete: "commit",
            },
        }
    }
}

/// Block blobs: blocks staged under the blob's name stay invisible until a
/// block list commits them, and Azure discards those never committed after a
/// week, so there is no upload to start or abort.
#[async_trait]
impl Multipart for Inner {
    /// This upload's mark in its block ids: two writers of one blob at once
    /// (a manual `wal push` beside the server's) must not stage over each
    /// other's uncommitted blocks, or the commit could mix them.
    type Upload = String;
    /// The block's id.
    type Part = Vec<u8>;

    async fn put_once(&self, what: &str, key: &str, body: Bytes, moved: Moved) -> Result<()> {
        let blob = self.container().await?.blob_client(&self.full_key(key));
        let options = BlockBlobClientUploadOptions {
            parallel: std::num::NonZero::new(1),
            partition_size: std::num::NonZero::new(body.len().max(1) as u64),
            ..Default::default()
        };
        blob.upload(moving(body, moved), Some(options))
            .await
            .map(|_| ())
            .map_err(|e| self.error(what, e))
    }

    async fn begin(&self, _: &str, _: &str) -> Result<String> {
        Ok(format!("{:016x}", fastrand::u64(..)))
    }

    async fn upload_part(
        &self,
        what: &str,
        key: &str,
        upload: &String,
        number: u32,
        body: Bytes,
        moved: Moved,
    ) -> Result<Vec<u8>> {
        let id = block_id(upload, number);
        let blob = self.container().await?.blob_client(&self.full_key(key));
        blob.block_blob_client()
            .stage_block(&id, body.len() as u64, moving(body, moved), None)
            .await
            .map_err(|e| self.error(what, e))?;
        Ok(id)
    }

    async fn complete(&self, what: &str, key: &str, _: &String, ids: &[Vec<u8>]) -> Result<()> {
        let list = BlockLookupList {
            latest: Some(ids.to_vec()),
            ..Default::default()
        };
        let content = list
            .try_into()
            .map_err(|e: azure_core::Error| Error::internal(format!("{what}: {e}")))?;
        let blob = self.container().await?.blob_client(&self.full_key(key));
        blob.block_blob_client()
            .commit_block_list(content, None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(what, e))
    }

    async fn abort(&self, _: &str, _: &str, _: &String) -> Result<()> {
        Ok(())
    }
}

/// A request body that says when its bytes go out: the transport reads it a
/// piece (64 KiB) at a time as the connection takes them.
fn moving<T>(body: Bytes, moved: Moved) -> azure_core::http::RequestContent<T, NoFormat> {
    let stream: Box<dyn SeekableStream> = Box::new(MovingStream {
        data: body,
        at: 0,
        moved,
    });
    azure_core::http::request::Body::from(stream).into()
}

#[derive(Debug, Clone)]
struct MovingStream {
    data: Bytes,
    at: usize,
    moved: Moved,
}

impl futures::io::AsyncRead for MovingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        out: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = out.len().min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.moved.tick();
        std::task::Poll::Ready(Ok(n))
    }
}

#[async_trait]
impl SeekableStream for MovingStream {
    async fn reset(&mut self) -> azure_core::Result<()> {
        self.at = 0;
        Ok(())
    }

    fn len(&self) -> Option<u64> {
        Some(self.data.len() as u64)
    }
}

/// Block ids: the upload's mark and the block's number, fixed-width so every
/// id has one length (Azure requires that within a blob).
fn block_id(upload: &str, number: u32) -> Vec<u8> {
    format!("{upload}-{number:08}").into_bytes()
}

/// Hides SAS signatures in text that may quote a request URL.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        let tail = &rest[i + 4..];
        let end = tail
            .find(|c: char| c == '&' || c == ')' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[async_trait]
impl Storage for AzureStorage {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn writer(&self, key: &Key) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.clone();
        let plan = inner.plan();
        Ok(Box::new(PartedWriter::new(inner, plan, key.as_str())))
    }

    async fn reader(&self, key: &Key) -> Result<ObjectReader> {
        let source = Arc::new(Download {
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
        let mut objects = list_pages(&inner.retry, what, |marker: Option<String>| async move {
            let options = BlobContainerClientListBlobsOptions {
                prefix: Some(full_prefix.clone()),
                marker,
                maxresults: Some(LIST_PAGE),
                ..Default::default()
            };
            let container = inner.container().await?;
            // One page per request, so a failed page is retried alone.
            let mut pages = container
                .list_blobs(Some(options))
                .map_err(|e| inner.error(what, e))?
                .into_pages();
            let page = match pages.next().await {
                Some(page) => page
                    .map_err(|e| inner.error(what, e))?
                    .into_model()
                    .map_err(|e| inner.error(what, e))?,
                None => return Err(Error::storage(format!("{what}: no answer page"))),
            };
            let mut objects = Vec::new();
            for blob in &page.blob_items {
                let Some(full) = blob.name.as_deref() else {
                    continue;
                };
                match full.get(strip..).map(Key::new) {
                    Some(Ok(key)) => objects.push(ObjectInfo {
                        key,
                        size: blob
                            .properties
                            .as_ref()
                            .and_then(|p| p.content_length)
                            .unwrap_or(0),
                        modified: blob
                            .properties
                            .as_ref()
                            .and_then(|p| p.last_modified)
                            .and_then(|t| {
                                jiff::Timestamp::new(t.unix_timestamp(), t.nanosecond() as i32).ok()
                            }),
                    }),
                    _ => tracing::debug!(
                        key = full,
                        "skipping a name that is not a valid object key"
                    ),
                }
            }
            let next = page.next_marker.filter(|next| !next.is_empty());
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
        let result = inner
            .retry
            .run(&what, || async {
                let blob = inner.container().await?.blob_client(&full);
                blob.delete(None)
                    .await
                    .map(|_| ())
                    .map_err(|e| inner.error(&what, e))
            })
            .await;
        match result {
            Err(e) if e.kind() == Kind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// A download from a byte offset, for the resuming reader.
struct Download {
    inner: Arc<Inner>,
    key: String,
}

#[async_trait]
impl OpenAt for Download {
    async fn open_at(&self, offset: u64) -> Result<ObjectReader> {
        let inner = &self.inner;
        let what = inner.what("download", &self.key);
        let blob = inner
            .container()
            .await?
            .blob_client(&inner.full_key(&self.key));
        let options = BlobClientDownloadOptions {
            range: (offset > 0).then(|| HttpRange::from_offset(offset)),
            // One range request at a time, 4 MiB each: bounded memory, and the
            // resuming reader handles what breaks.
            parallel: std::num::NonZero::new(1),
            partition_size: std::num::NonZero::new(4 << 20),
            ..Default::default()
        };
        let response = blob
            .download(Some(options))
            .await
            .map_err(|e| inner.error(&what, e))?;
        let name = inner.name.clone();
        let stream = response.body.map(move |chunk| {
            chunk.map_err(|e| {
                std::io::Error::other(format!("storage {name}: {}", redact(&e.to_string())))
            })
        });
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_name_account_endpoint_and_credential() {
        let cs = parse_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=camp;AccountKey=a2V5PQ==;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(cs.account, "camp");
        assert_eq!(cs.endpoint, "https://camp.blob.core.windows.net");
        assert!(matches!(&cs.auth, Credential::AccountKey(k) if k.expose() == "a2V5PQ=="));

        let cs = parse_connection_string(
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;SharedAccessSignature=sv=2022&sig=abc",
        )
        .unwrap();
        assert_eq!(cs.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert!(matches!(&cs.auth, Credential::SasToken(s) if s.expose() == "sv=2022&sig=abc"));

        let dev = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.account, DEV_ACCOUNT);
        assert!(parse_connection_string("AccountName=x").is_err());
        assert!(parse_connection_string("garbage").is_err());
    }

    #[test]
    fn sas_signatures_are_redacted() {
        assert_eq!(
            redact("error sending request for url (http://h/c/b?sv=1&sig=abc%2Fdef&se=2)"),
            "error sending request for url (http://h/c/b?sv=1&sig=REDACTED&se=2)"
        );
        assert_eq!(redact("no secrets"), "no secrets");
    }

    #[test]
    fn an_account_sas_carries_its_fields() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let sas = account_sas(
            DEV_ACCOUNT,
            &Secret::new(DEV_KEY),
            now,
            now + jiff::SignedDuration::from_hours(2),
            false,
        )
        .unwrap();
        for field in [
            "sv=2022-11-02",
            "ss=b",
            "srt=co",
            "sp=rwdlac",
            "spr=https%2Chttp",
            "sig=",
        ] {
            assert!(sas.contains(field), "{field} in {sas}");
        }
        assert!(!sas.contains(DEV_KEY));
    }

    #[test]
    fn block_ids_have_one_length() {
        let (a, b) = ("0123456789abcdef", "fedcba9876543210");
        assert_eq!(block_id(a, 1).len(), block_id(b, 49_999).len());
        assert_ne!(block_id(a, 1), block_id(b, 1));
    }
}
