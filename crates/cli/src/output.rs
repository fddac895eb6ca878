//! How results are shown: readable text (tables or `key: value` lines) by default, or with
//! `--output json` one pretty-printed JSON document on stdout. Progress bars go to stderr, only
//! when it is a terminal and the output is text.
//!
//! The JSON documents are stable. Point ids are JSON numbers (numeric ids) or strings (string
//! ids); scores and vectors are numbers; absent optional values are `null`.
//!
//! | command               | JSON document |
//! |-----------------------|---------------|
//! | `collection create`   | `{"created": NAME}` |
//! | `collection list`     | `[COLLECTION, ...]` |
//! | `collection describe` | `COLLECTION` |
//! | `collection drop`     | `{"dropped": NAME}` |
//! | `points upsert`       | `{"upserted": N}` |
//! | `points get`          | `{"points": [{"id": ID, "vector": [..]}], "missing": [ID, ..]}` (`vector` only with `--with-vectors`) |
//! | `points delete`       | `{"deleted": N}` (ids that did not exist are not counted) |
//! | `points count`        | `{"count": N}` |
//! | `search`              | `[[{"id": ID, "score": S, "vector": [..]}, ..], ..]`: one list per query, best first (`vector` only with `--with-vectors`) |
//! | `bench`               | see below |
//! | `cluster status`      | see below |
//! | `node list`           | `[{"id", "address", "meta_role": "voter"\|"learner"}, ...]` |
//! | `node remove`         | `{"removed": ID, "collections": [NAME, ..]}`: the collections that lost a replica on the node |
//!
//! `COLLECTION` is `{"name", "dimension", "metric": "l2"|"ip"|"cosine", "index",
//! "index_params": {KEY: VALUE}, "points", "segments": [{"id", "state":
//! "growing"|"sealing"|"sealed", "points", "deleted", "bytes", "index", "origin"}],
//! "index_state": "ready"|"indexing", "disk_bytes", "memory_bytes", "replication_factor",
//! "replicas": [NODE_ID, ..], "group"}`, where `points` counts live points,
//! `replication_factor` is the number of replicas asked for at creation and `replicas` the
//! nodes that hold one now.
//!
//! `bench` prints `{"collection", "n", "dim", "k", "ingest": {"points", "seconds",
//! "points_per_sec"} | null (with --skip-load), "index_wait_seconds", "runs": [{"concurrency",
//! "queries", "qps", "recall_at_k", "latency_ms": {"p50", "p95", "p99", "mean"}}],
//! "params": {"ef", "nprobe"}, "consistency": "strong"|"eventual"}`, where `queries` is the
//! number of requests sent in that run.
//!
//! `cluster status` prints `{"node_id", "nodes": [{"id", "address", "meta_role", "reachable"}],
//! "groups": [{"group", "collection", "leader", "term", "replicas": [{"node_id", "state",
//! "term", "last_log_index", "committed_index", "applied_index", "lag"}]}]}`: `node_id` is the
//! node that answered; the meta group (group 0, `"collection": null`) comes first, then one
//! group per collection; `leader` is `null` when no leader is known; a replica's `state` is
//! "leader", "follower", "candidate", "learner" or "unreachable", and `lag` the entries the
//! leader has that the replica has not applied.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use anyhow::Result;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// A command's result, printable in either format.
pub trait Report: Serialize {
    /// The human-readable form, without a trailing newline.
    fn text(&self) -> String;
}

pub fn print(format: Format, report: &impl Report) -> Result<()> {
    let out = match format {
        Format::Text => report.text(),
        Format::Json => serde_json::to_string_pretty(report)?,
    };
    let mut stdout = std::io::stdout().lock();
    if !out.is_empty() {
        writeln!(stdout, "{out}")?;
    }
    stdout.flush()?;
    Ok(())
}

/// Left-aligned columns separated by two spaces, with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = headers.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let line = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ");
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A vector as `[0.1, 0.2, ...]`.
pub fn vector_text(vector: &[f32]) -> String {
    let values: Vec<String> = vector.iter().map(f32::to_string).collect();
    format!("[{}]", values.join(", "))
}

fn draw_target(format: Format) -> ProgressDrawTarget {
    if format == Format::Text && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A progress bar over `len` items on stderr, cleared when dropped.
pub fn progress_bar(format: Format, len: u64, unit: &str) -> ProgressBar {
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    let style =
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(Some(len), draw_target(format))
        .with_style(style)
        .with_finish(ProgressFinish::AndClear)
}

/// A spinner with a message on stderr, for waits of unknown length; cleared when dropped.
pub fn spinner(format: Format, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    let spinner = ProgressBar::with_draw_target(None, draw_target(format))
        .with_style(ProgressStyle::default_spinner())
        .with_message(message)
        .with_finish(ProgressFinish::AndClear);
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner
}

/// "shard 2: <message>; shard 5: <message>".
pub fn shard_failures(failures: &[shoal_proto::v1::ShardFailure]) -> String {
    let listed: Vec<String> = failures
        .iter()
        .map(|f| format!("shard {}: {}", f.shard, f.message))
        .collect();
    format!(
        "{} shard(s) did not answer ({})",
        failures.len(),
        listed.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["a".to_owned(), "12345".to_owned(), String::new()],
            vec!["long-name".to_owned(), "1".to_owned(), "x".to_owned()],
        ];
        let text = table(&["NAME", "N", "S"], &rows);
        assert_eq!(
            text,
            "NAME       N      S\n\
             a          12345\n\
             long-name  1      x"
        );
    }
}
