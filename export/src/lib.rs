//! Streaming exports (audit records, room history) as CSV or JSON: rows are
//! read from a cursor and handed out in chunks, so an export of any size
//! never sits in memory; and as PDF (`pdf`). A crate of its own so that
//! only the binaries that export (the edge, `natterctl`) link the PDF
//! writer and its font.

pub mod pdf;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use serde::Serialize;

/// Rows per chunk.
const CHUNK_ROWS: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Pdf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Pdf => "application/pdf",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Pdf => "pdf",
        }
    }
}

/// A row of a tabular export: a header and the cells.
pub trait Row: Serialize {
    fn header() -> &'static [&'static str];
    fn cells(&self) -> Vec<String>;
    /// The columns a PDF shows (name, relative width).
    fn pdf_columns() -> &'static [(&'static str, f32)];
    fn pdf_cells(&self) -> Vec<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("the receiver went away")]
    Closed,
}

/// A CSV cell a spreadsheet will not run: one starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return (a formula, to Excel and its kin) gets a
/// leading `'`, which spreadsheets show as text (OWASP's advice on CSV
/// injection). Message content and names are written by users.
pub fn inert_cell(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{cell}") } else { cell }
}

/// Writes `rows` as CSV or JSON through `sink`, a chunk at a time; `sink`
/// returns false to stop (the client went away). Returns the row count.
pub async fn write<T, S, F, Fut>(format: Format, mut rows: S, mut sink: F) -> Result<u64, ExportError>
where
    T: Row,
    S: Stream<Item = Result<T, mongodb::error::Error>> + Unpin,
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut n = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(T::header()).map_err(|e| ExportError::Encode(e.to_string()))?;
            buf.extend(w.into_inner().map_err(|e| ExportError::Encode(e.to_string()))?);
        }
        Format::Json => buf.push(b'['),
        Format::Pdf => return Err(ExportError::Encode("PDF is written by the pdf module".into())),
    }
    let mut in_chunk = 0;
    while let Some(row) = rows.try_next().await? {
        match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                let cells = row.cells().into_iter().map(inert_cell);
                w.write_record(cells).map_err(|e| ExportError::Encode(e.to_string()))?;
                buf.extend(w.into_inner().map_err(|e| ExportError::Encode(e.to_string()))?);
            }
            _ => {
                if n > 0 {
                    buf.push(b',');
                }
                serde_json::to_writer(&mut buf, &row).map_err(|e| ExportError::Encode(e.to_string()))?;
            }
        }
        n += 1;
        in_chunk += 1;
        if in_chunk >= CHUNK_ROWS {
            if !sink(Bytes::from(std::mem::take(&mut buf))).await {
                return Err(ExportError::Closed);
            }
            in_chunk = 0;
        }
    }
    if format == Format::Json {
        buf.push(b']');
    }
    if !buf.is_empty() && !sink(Bytes::from(buf)).await {
        return Err(ExportError::Closed);
    }
    Ok(n)
}

impl Row for natter_shared::audit::AuditView {
    fn header() -> &'static [&'static str] {
        &[
            "seq",
            "chainSeq",
            "time",
            "action",
            "actor",
            "roles",
            "conversationId",
            "groupId",
            "targets",
            "status",
            "reason",
            "code",
            "meta",
            "prevHash",
            "hash",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.seq.to_string(),
            self.chain_seq.to_string(),
            self.time.clone(),
            self.action.clone(),
            self.actor.clone().unwrap_or_default(),
            self.roles.join(" "),
            self.conversation_id.clone().unwrap_or_default(),
            self.group_id.clone().unwrap_or_default(),
            self.targets.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            self.status.as_str().to_string(),
            self.reason.clone().unwrap_or_default(),
            self.code.clone().unwrap_or_default(),
            self.meta.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            self.prev_hash.clone(),
            self.hash.clone(),
        ]
    }

    fn pdf_columns() -> &'static [(&'static str, f32)] {
        &[
            ("seq", 8.0),
            ("time", 24.0),
            ("action", 18.0),
            ("actor", 22.0),
            ("room", 22.0),
            ("targets", 50.0),
            ("status", 12.0),
            ("reason", 30.0),
        ]
    }

    fn pdf_cells(&self) -> Vec<String> {
        vec![
            self.seq.to_string(),
            self.time.clone(),
            self.action.clone(),
            self.actor.clone().unwrap_or_default(),
            self.conversation_id.clone().or(self.group_id.clone()).unwrap_or_default(),
            self.targets.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            self.status.as_str().to_string(),
            self.reason.clone().unwrap_or_default(),
        ]
    }
}

/// A message as an Admin's export shows it: what members see, and the
/// versions its edits replaced, oldest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedMessage {
    #[serde(flatten)]
    pub view: natter_shared::model::MessageView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_versions: Vec<EarlierVersion>,
}

/// A version of a message an edit replaced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EarlierVersion {
    pub content: String,
    pub written_at: String,
    pub replaced_at: String,
}

impl ExportedMessage {
    pub fn new(m: &natter_shared::model::MessageDoc, receipts: natter_shared::model::Receipts<'_>) -> Self {
        let iso = natter_shared::timefmt::iso;
        ExportedMessage {
            view: receipts.view(m),
            earlier_versions: m
                .edits
                .iter()
                .map(|e| EarlierVersion {
                    content: e.content.clone(),
                    written_at: iso(e.written_at),
                    replaced_at: iso(e.replaced_at),
                })
                .collect(),
        }
    }

    /// The earlier versions in one cell: `[replaced at] content`, oldest first.
    fn earlier(&self) -> String {
        let parts: Vec<String> =
            self.earlier_versions.iter().map(|v| format!("[{}] {}", v.replaced_at, v.content)).collect();
        parts.join("\n")
    }
}

impl Row for ExportedMessage {
    fn header() -> &'static [&'static str] {
        &[
            "seq",
            "id",
            "createdAt",
            "senderId",
            "messageType",
            "content",
            "status",
            "readBy",
            "attachments",
            "editedAt",
            "earlierVersions",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let v = &self.view;
        vec![
            v.seq.to_string(),
            v.id.clone(),
            v.created_at.clone(),
            v.sender_id.clone(),
            v.message_type.as_str().to_string(),
            v.content.clone(),
            v.status.as_str().to_string(),
            v.read_by.join(" "),
            v.attachments.iter().filter_map(|a| a["name"].as_str().map(String::from)).collect::<Vec<_>>().join(" "),
            v.edited_at.clone().unwrap_or_default(),
            self.earlier(),
        ]
    }

    fn pdf_columns() -> &'static [(&'static str, f32)] {
        &[("seq", 8.0), ("time", 24.0), ("sender", 22.0), ("type", 10.0), ("content", 100.0), ("status", 10.0)]
    }

    fn pdf_cells(&self) -> Vec<String> {
        let v = &self.view;
        let content = if self.earlier_versions.is_empty() {
            v.content.clone()
        } else {
            // A PDF row is one line: the versions are in the CSV and JSON.
            format!("{} (edited; {} earlier versions)", v.content, self.earlier_versions.len())
        };
        vec![
            v.seq.to_string(),
            v.created_at.clone(),
            v.sender_id.clone(),
            v.message_type.as_str().to_string(),
            content,
            v.status.as_str().to_string(),
        ]
    }
}

/// Audit records matching `filter`, newest first, as views.
pub async fn audit_rows(
    store: &natter_shared::store::Store,
    filter: &natter_shared::audit::Filter,
) -> Result<
    impl Stream<Item = Result<natter_shared::audit::AuditView, mongodb::error::Error>> + Unpin + use<>,
    mongodb::error::Error,
> {
    let window = natter_shared::audit::Window { filter: filter.clone(), before: None };
    let records = natter_shared::audit::records(&store.audit(), window).await?;
    Ok(records.map_ok(|r| natter_shared::audit::AuditView::from(&r)))
}

/// A room's messages (not deleted), oldest first, with the versions their
/// edits replaced.
pub async fn history_rows(
    store: &natter_shared::store::Store,
    room: &natter_shared::ids::RoomRef,
) -> Result<impl Stream<Item = Result<ExportedMessage, mongodb::error::Error>> + Unpin + use<>, mongodb::error::Error> {
    let cursors = store.cursors(room).await?;
    let cur = store.messages().find(room.live_messages()).sort(mongodb::bson::doc! {"seq": 1}).batch_size(1000).await?;
    Ok(cur.map_ok(move |m| ExportedMessage::new(&m, cursors.receipts())))
}

#[cfg(test)]
mod inert_tests {
    use super::inert_cell;

    #[test]
    fn formulas_are_written_as_text() {
        for f in ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(inert_cell(f.into()), format!("'{f}"));
        }
        assert_eq!(inert_cell("hello = world".into()), "hello = world");
        assert_eq!(inert_cell(String::new()), "");
    }
}
