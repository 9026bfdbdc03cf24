//! The files of one multipart request, staged by the transport before the operations run and
//! taken by the resolvers that store them (`Upload` variables name them by `map` key).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use crate::storage::StagedUpload;

/// The staged files of one request, by their `map` key. Unclaimed files are deleted when the
/// request ends (dropping a `StagedUpload` removes its file).
#[derive(Default)]
pub struct Uploads(Mutex<HashMap<String, StagedUpload>>);

impl Uploads {
    /// Each file part's name and the sha256 of its bytes, for request fingerprints.
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.files()
            .iter()
            .map(|(k, u)| (k.clone(), u.blob.sha256.clone()))
            .collect()
    }

    /// Takes the file a variable points at; each file can be used once.
    pub fn take(&self, key: &str) -> Option<StagedUpload> {
        self.files().remove(key)
    }

    /// Whether a file part of this name was staged already.
    pub fn contains(&self, key: &str) -> bool {
        self.files().contains_key(key)
    }

    /// How many files are staged.
    pub fn len(&self) -> usize {
        self.files().len()
    }

    /// Whether no file is staged.
    pub fn is_empty(&self) -> bool {
        self.files().is_empty()
    }

    /// Keeps a staged file under its part's name.
    pub fn insert(&self, key: String, file: StagedUpload) {
        self.files().insert(key, file);
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<String, StagedUpload>> {
        self.0.lock().expect("uploads lock")
    }
}
