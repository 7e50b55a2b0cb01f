//! A folder of static files served as they are (the OHIF viewer's prebuilt
//! `dist/`, `[http] viewer_dir`): read by a relative path that can never
//! leave the folder. Not archive data: nothing here touches the index or
//! the storage filesystems.

use std::path::{Component, Path, PathBuf};

/// A folder of static files.
#[derive(Debug, Clone)]
pub(crate) struct StaticFiles {
    root: PathBuf,
}

impl StaticFiles {
    /// The files under `root` (resolved now; a folder that cannot be
    /// resolved is kept as given, and every read then fails).
    pub(crate) fn new(root: &Path) -> StaticFiles {
        StaticFiles {
            root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    /// The file `relative` names (plain names only, a symbolic link leading
    /// out refused), if it is one; else `fallback`. Its name and bytes.
    pub(crate) fn read_or(
        &self,
        relative: Option<&str>,
        fallback: &str,
    ) -> Result<(PathBuf, Vec<u8>), std::io::Error> {
        let file = relative
            .and_then(|r| self.within(r))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| self.root.join(fallback));
        let bytes = std::fs::read(&file)?;
        Ok((file, bytes))
    }

    fn within(&self, relative: &str) -> Option<PathBuf> {
        let path = Path::new(relative);
        if relative.contains('\\')
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let real = self.root.join(path).canonicalize().ok()?;
        real.starts_with(&self.root).then_some(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_folder() {
        let dir = std::env::temp_dir().join(format!("imageserver-static-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("assets/a.png"), b"a").unwrap();
        std::fs::write(dir.join("index.html"), b"index").unwrap();
        let files = StaticFiles::new(&dir);
        let read = |p: &str| files.read_or(Some(p), "index.html").unwrap().1;
        assert_eq!(read("assets/a.png"), b"a");
        for outside in [
            "../etc/passwd",
            "assets/../../x",
            "/etc/passwd",
            "missing.js",
            "assets",
        ] {
            assert_eq!(read(outside), b"index", "{outside}");
        }
        assert_eq!(files.read_or(None, "index.html").unwrap().1, b"index");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
