//! An in-memory storage for unit tests of the layers above storage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    name: String,
    objects: Arc<Mutex<BTreeMap<Key, Arc<Vec<u8>>>>>,
}

impl MemoryStorage {
    pub fn new(name: &str) -> Self {
        MemoryStorage {
            name: name.to_owned(),
            objects: Arc::default(),
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Arc<Vec<u8>>>> {
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces an object's bytes, for tests that corrupt what is stored.
    pub fn put(&self, key: &Key, bytes: Vec<u8>) {
        self.objects().insert(key.clone(), Arc::new(bytes));
    }

    pub fn get(&self, key: &Key) -> Option<Vec<u8>> {
        self.objects().get(key).map(|b| b.as_ref().clone())
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn writer(&self, key: &Key) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemoryWriter {
            storage: self.clone(),
            key: key.clone(),
            buf: Vec::new(),
        }))
    }

    async fn reader(&self, key: &Key) -> Result<ObjectReader> {
        match self.objects().get(key) {
            Some(bytes) => Ok(Box::pin(std::io::Cursor::new(bytes.as_ref().clone()))),
            None => Err(Error::not_found(format!(
                "storage {}: object {key} does not exist",
                self.name
            ))),
        }
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<ObjectInfo>> {
        let start = format!("{}/", prefix.as_str());
        Ok(self
            .objects()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(&start))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
                modified: None,
            })
            .collect())
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.objects().remove(key);
        Ok(())
    }
}

struct MemoryWriter {
    storage: MemoryStorage,
    key: Key,
    buf: Vec<u8>,
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        let size = self.buf.len() as u64;
        self.storage.put(&self.key, self.buf);
        Ok(size)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
