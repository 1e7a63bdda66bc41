//! A reader of keepalived's configuration file (`keepalived.conf` and what it includes), so
//! that keepalived's own configuration can be the agent's source of truth for the node's VRRP
//! instances, sync groups, VIPs and their interfaces, tracked interfaces and track files,
//! unicast peers and notify wiring.
//!
//! **Why parse the files rather than keepalived's data dump.** keepalived can write its
//! running configuration on SIGUSR1 (`/tmp/keepalived.data`), which would spare a parser. The
//! dump was not chosen: it needs a running keepalived (the agent must be able to check a pair
//! before keepalived starts, and while it is stopped), it is written to a fixed file in `/tmp`
//! that the agent would have to trust, and its format is undocumented and changes between
//! versions. Parsing the files for the constructs keepalived 2.2 documents (keepalived.conf(5),
//! with the grammar of its `lib/parser.c` and `keepalived/vrrp/vrrp_parser.c`) works on any
//! node, and every refusal names the file and line, before keepalived has even started.
//!
//! **What is read.** The lexical rules are keepalived's own (lexer.rs): `#` and `!` comments,
//! `"..."` words, `{` and `}` wherever they stand, and `include PATTERN` (relative to the
//! including file's directory, `*` and `?` in the file name, matches read in sorted order).
//! The model ([`KeepalivedConf`]) holds `global_defs` (`router_id`, `vrrp_notify_fifo`,
//! `notify_fifo`), every `vrrp_instance` (`state`, `interface`, `virtual_router_id`,
//! `priority`, `advert_int`, `virtual_ipaddress` and `virtual_ipaddress_excluded` with `dev`
//! and `label`, `track_interface`, `track_file`, `unicast_src_ip`, `unicast_peer`, `use_vmac`,
//! `notify`, `notify_master`, `notify_backup`, `notify_fault`, `notify_stop`), every
//! `vrrp_sync_group` (`group`, its own tracking and notify scripts) and every `track_file`
//! (or its deprecated name `vrrp_track_file`). Other keywords, inside these blocks or at the
//! top (`virtual_server`, `vrrp_script`, ...), are skipped whole and listed with their place
//! in [`KeepalivedConf::ignored`]: never guessed at.
//!
//! **What is refused**, each as one [`ConfError`] line `FILE:LINE: what`: the constructs whose
//! meaning cannot be known from the files alone (`$NAME` parameter substitution, `$NAME=`
//! definitions, `@config_id` conditional lines, `~SEQ` / `~LST` sequences); unbalanced braces;
//! an include cycle, includes or blocks nested deeper than [`MAX_DEPTH`], a missing included
//! file that is not a pattern, and patterns beyond `*` and `?`; a VIP that is not an IP
//! address with an optional prefix length, or with an option keepalived does not know; a sync
//! group naming an instance that does not exist, or an instance in two groups; a `track_file`
//! reference with no `track_file` block; a keyword the model reads given twice in one block
//! (keepalived would keep one of them); a value that does not parse.
//!
//! **Files:** `lexer` (lines, quotes, comments, includes and the refused constructs), `tree`
//! (braces into statements), `parse` (the blocks), `values` (addresses, weights, timers),
//! `model` ([`KeepalivedConf`] and its parts), `error` ([`ConfError`]), `tests`.
//!
//! **Not done yet.** Nothing uses the reader: the agent's configuration and `drain-agent check`
//! do not read keepalived's file, and the cross-validation of the two (issue 17's next slice)
//! is still to be written.

mod error;
mod lexer;
mod model;
mod parse;
mod tree;
mod values;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{ConfError, Location};
pub use lexer::{Files, Kind, RealFiles, MAX_DEPTH};
pub use model::{
    FifoPath, GlobalDefs, Ignored, InitialState, Instance, KeepalivedConf, Member, Notifies,
    Notify, SyncGroup, TrackFileDef, Tracked, UnicastPeer, Vip, Vmac,
};

impl KeepalivedConf {
    /// Reads keepalived's configuration from `path` and the files it includes.
    pub fn read(path: &Path) -> Result<KeepalivedConf, ConfError> {
        Self::read_from(&RealFiles, path)
    }

    /// Reads the configuration whose top file `path` holds `text`; included files come from
    /// the file system, relative to `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<KeepalivedConf, ConfError> {
        Self::parse_from(&RealFiles, text.as_bytes(), path)
    }

    /// [`KeepalivedConf::read`] with the files taken from `files`.
    pub fn read_from(files: &dyn Files, path: &Path) -> Result<KeepalivedConf, ConfError> {
        let bytes = files.read(path).map_err(|e| ConfError::Read {
            at: Location {
                path: path.to_path_buf(),
                line: 0,
            },
            reason: e.to_string(),
        })?;
        Self::parse_from(files, &bytes, path)
    }

    /// [`KeepalivedConf::parse`] with included files taken from `files`.
    pub fn parse_from(
        files: &dyn Files,
        bytes: &[u8],
        path: &Path,
    ) -> Result<KeepalivedConf, ConfError> {
        let mut loader = lexer::Loader::new(files);
        loader.file(path, bytes)?;
        parse::model(loader.items, loader.read)
    }
}
