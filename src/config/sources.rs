//! Where job files come from: `--config` names one file or a directory of
//! them; each is read whole (a regular file, at most 1 MiB, UTF-8) and parsed
//! into the raw structs, with errors naming the file, the line and the column.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::RawFile;
use crate::error::{Error, Result};
use crate::secret::Origin;

/// One parsed file, kept with its text so spans turn into line numbers.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) text: String,
}

impl Source {
    pub(super) fn origin<T>(&self, spanned: &Spanned<T>) -> Origin {
        self.origin_at(spanned.span().start)
    }

    pub(super) fn origin_at(&self, offset: usize) -> Origin {
        let line = self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        Origin {
            file: self.path.clone(),
            line,
        }
    }

    pub(super) fn error<T>(&self, at: &Spanned<T>, message: impl std::fmt::Display) -> Error {
        Error::config(format!("{}: {message}", self.origin(at)))
    }
}

/// The most a job file may hold: real ones are a few KiB, and a bound keeps a
/// wrong `--config` (`/dev/zero`, a log file) from eating the memory.
const MAX_JOB_FILE: u64 = 1 << 20;

/// The text of one job file, which must be a regular file of at most
/// [`MAX_JOB_FILE`] bytes: a device or a FIFO would never end, or block.
pub(super) fn read_job_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io_error = |e| Error::io(crate::error::Kind::Config, path.display(), e);
    let hint = "--config takes a job file (a regular file of at most 1 MiB) or a directory of them";
    // Opening a FIFO would wait for a writer: no waiting, and the type is
    // checked on what was opened, so a swap after a check changes nothing.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something other than a regular file"
        };
        return Err(
            Error::config(format!("{}: is {what}, not a job file", path.display())).with_hint(hint),
        );
    }
    let too_big = || {
        Error::config(format!(
            "{}: is larger than the 1 MiB a job file may hold",
            path.display()
        ))
        .with_hint(hint)
    };
    if meta.len() > MAX_JOB_FILE {
        return Err(too_big());
    }
    // It may grow after the check: read one byte past the limit, no more.
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_JOB_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_JOB_FILE {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| {
        Error::config(format!("{}: is not UTF-8 text", path.display()))
            .with_hint("a job file is TOML, which is UTF-8")
    })
}

/// A file is itself; a directory is every `*.toml` in it, in name order.
pub(super) fn config_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::io(crate::error::Kind::Config, path.display(), e).with_hint(
            "pass --config PATH or set BACKUP_CONFIG to a job file or a directory of them",
        )
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Error::io(crate::error::Kind::Config, path.display(), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(crate::error::Kind::Config, path.display(), e))?;
        let p = entry.path();
        // Whatever its type: one that is not a job file is an error, not skipped.
        if p.extension().is_some_and(|e| e == "toml") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::config(format!(
            "{}: no *.toml files in this directory",
            path.display()
        )));
    }
    Ok(files)
}

pub(super) fn parse(source: &Source) -> Result<RawFile> {
    toml::from_str(&source.text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let before = &source.text[..span.start.min(source.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{}:{line}:{column}", source.path.display())
            }
            None => source.path.display().to_string(),
        };
        let message = e.message().replace("unknown field", "unknown key");
        Error::config(format!("{at}: {message}"))
            .with_hint("see the job file format in README.md; keys are case-sensitive")
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, error_of};

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = GOOD.replace(
            "compression = \"gzip\"",
            "compression = \"gzip\"\ncolour = \"blue\"",
        );
        let err = error_of(&text);
        assert!(err.contains("jobs/app.toml:17"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }
}
