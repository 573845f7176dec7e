//! Commands that work on a stopped broker's data directory: `rotate-master-key`,
//! `backup` and `restore`. Each opens the store itself, and so takes its lock: against
//! a running certmq they refuse ("another certmq is using the data dir") instead of
//! racing it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use registry::rekey;
use registry::seal::{random_bytes, write_private_file, MasterKey};
use registry::store::SledStore;

/// Files of a data directory besides the store that a backup carries.
const KEPT_FILES: [&str; 2] = ["master.key", "admin-token"];

/// `certmq rotate-master-key`: every sealed private key is opened with the current
/// master key and sealed under the new one, in one atomic batch.
///
/// The current key is `CERTMQ_MASTER_KEY` when set, else `<data-dir>/master.key`. The
/// new one comes from `new_key_file` (64 hex characters), else `CERTMQ_NEW_MASTER_KEY`,
/// else (only when the current key is the file) it is generated. When the current key
/// is the file, the new key is written to `master.key.new` before the store changes
/// and renamed over `master.key` after: a failure before the store's batch leaves the
/// old key valid and the store untouched; a crash between the batch and the rename is
/// finished by running the command again.
pub(crate) fn rotate_master_key(
    data_dir: &Path,
    new_key_file: Option<&Path>,
) -> anyhow::Result<()> {
    let key_file = data_dir.join("master.key");
    let pending = data_dir.join("master.key.new");
    let env_old = std::env::var("CERTMQ_MASTER_KEY").ok();
    refuse_postgres(data_dir, "rotate-master-key")?;
    if !data_dir.join("store").exists() {
        bail!("{} holds no certmq store", data_dir.display());
    }
    let store = SledStore::open(data_dir)?;
    let (old_hex, old_source) = match &env_old {
        Some(hex) => (hex.trim().to_owned(), "CERTMQ_MASTER_KEY".to_owned()),
        None => (
            std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading the current master key {}", key_file.display()))?
                .trim()
                .to_owned(),
            key_file.display().to_string(),
        ),
    };
    let old = MasterKey::from_hex(&old_hex, &old_source)?;
    // A rotation that stopped between the store's batch and the rename: the store is
    // sealed under master.key.new already.
    if env_old.is_none() && pending.exists() && rekey::opens_all(&store, &old).is_err() {
        let text = std::fs::read_to_string(&pending)
            .with_context(|| format!("reading {}", pending.display()))?;
        let new = MasterKey::from_hex(text.trim(), &pending.display().to_string())?;
        if rekey::opens_all(&store, &new).is_ok() {
            std::fs::rename(&pending, &key_file)
                .with_context(|| format!("renaming {} to master.key", pending.display()))?;
            println!(
                "finished an interrupted rotation: {} is the new master key",
                key_file.display()
            );
            return Ok(());
        }
    }
    let (new_hex, new_source) = match new_key_file {
        Some(f) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the new master key {}", f.display()))?
                .trim()
                .to_owned(),
            f.display().to_string(),
        ),
        None => match std::env::var("CERTMQ_NEW_MASTER_KEY") {
            Ok(v) => (v.trim().to_owned(), "CERTMQ_NEW_MASTER_KEY".to_owned()),
            Err(_) if env_old.is_none() => {
                (hex_encode(&random_bytes::<32>()), "generated".to_owned())
            }
            Err(_) => bail!(
                "the current key comes from CERTMQ_MASTER_KEY: give the new one with \
                 --new-key-file FILE or CERTMQ_NEW_MASTER_KEY (certmq will not print a key)"
            ),
        },
    };
    let new = MasterKey::from_hex(&new_hex, &new_source)?;
    if new_hex.eq_ignore_ascii_case(&old_hex) {
        bail!("the new master key is the current one");
    }
    if env_old.is_none() {
        write_private_file(&pending, new_hex.as_bytes())
            .with_context(|| format!("writing {}", pending.display()))?;
    }
    let n = match rekey::reseal_all(&store, &old, &new) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&pending);
            bail!("{e} (the master key from {old_source} is still the valid one)");
        }
    };
    drop(store);
    if env_old.is_none() {
        std::fs::rename(&pending, &key_file).with_context(|| {
            format!(
                "renaming {} to master.key (run the command again to finish)",
                pending.display()
            )
        })?;
        println!(
            "re-sealed {n} private keys under the new master key, now in {}",
            key_file.display()
        );
    } else {
        println!(
            "re-sealed {n} private keys under the new master key from {new_source}: set \
             CERTMQ_MASTER_KEY to it before the next start (the old key no longer opens them)"
        );
    }
    Ok(())
}

/// `certmq backup`: a consistent copy of a stopped broker's data directory in `out`
/// (a new directory, mode 0700): the store, copied tree by tree and checked against
/// the original, and the master key and admin token files when the data dir has them.
pub(crate) fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<()> {
    refuse_postgres(data_dir, "backup")?;
    if !data_dir.join("store").exists() {
        bail!("{} holds no certmq store", data_dir.display());
    }
    let store = SledStore::open(data_dir)?;
    create_private_dir(out)?;
    store.copy_to(out)?;
    let copied = copy_kept_files(data_dir, out)?;
    println!(
        "backup of {} written to {} (store{})",
        data_dir.display(),
        out.display(),
        copied.iter().map(|f| format!(", {f}")).collect::<String>()
    );
    if !copied.iter().any(|f| f == "master.key") {
        println!("note: no master.key in the data dir: keep CERTMQ_MASTER_KEY with this backup, its private keys open only with it");
    }
    Ok(())
}

/// `certmq restore`: a backup made by [`backup`] into `data_dir`, which must hold no
/// store yet (a restore never merges into or overwrites live data).
pub(crate) fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    if !from.join("store").exists() {
        bail!("{} is not a certmq backup (no store in it)", from.display());
    }
    if data_dir.join("store").exists() {
        bail!(
            "{} already holds a store: restore into an empty or new directory (move the \
             old one aside first)",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let backup = SledStore::open(from)?;
    backup.copy_to(data_dir)?;
    let copied = copy_kept_files(from, data_dir)?;
    println!(
        "restored {} into {} (store{})",
        from.display(),
        data_dir.display(),
        copied.iter().map(|f| format!(", {f}")).collect::<String>()
    );
    Ok(())
}

/// The offline commands work on the embedded store: a node whose registry is in
/// PostgreSQL (docs/cluster.md) keeps only message state there, so they refuse.
fn refuse_postgres(data_dir: &Path, command: &str) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::app::POSTGRES_MARKER);
    if let Ok(url) = std::fs::read_to_string(&marker) {
        bail!(
            "{} belongs to a node whose registry is in PostgreSQL ({}): `certmq {command}` \
             works on the embedded store only. Back the registry up with the database's own \
             tools (pg_dump) and keep the master key beside it; see docs/cluster.md",
            data_dir.display(),
            url.trim()
        );
    }
    Ok(())
}

/// Copies [`KEPT_FILES`] that exist in `from` to `to` (mode 0600); their names.
fn copy_kept_files(from: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in KEPT_FILES {
        let src = from.join(name);
        match std::fs::read(&src) {
            Ok(bytes) => {
                let dst: PathBuf = to.join(name);
                write_private_file(&dst, &bytes)
                    .with_context(|| format!("writing {}", dst.display()))?;
                copied.push(name.to_owned());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
        }
    }
    Ok(copied)
}

/// Creates `dir` (which must not exist, or be empty) readable by its owner only.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} exists and is not empty: back up into a new directory",
                dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
