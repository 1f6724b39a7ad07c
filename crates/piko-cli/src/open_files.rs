//! The open-file limit: every upstream, client connection and tunnel holds a descriptor (two
//! for a tunnel through `piko forward`), so the soft limit's usual 1024 would cap a process at a
//! few hundred connections.

/// Raises the soft limit to the hard limit, and logs the result.
pub(crate) fn raise_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(err) => {
            tracing::warn!(error = %err, "failed to raise open file limit")
        }
    }
}
