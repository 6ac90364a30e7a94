//! PDF exports: a real document with a title, the filters, the time it was
//! made, and a table that continues across pages, in DejaVu Sans (embedded
//! and subset) so names and messages in Latin, Greek, Cyrillic, Arabic,
//! Hebrew and more render as written.
//!
//! printpdf assembles the document before writing it, so the rows of one
//! PDF are bounded by `MAX_ROWS`; larger exports say so on the last page
//! and point to CSV or JSON, which stream without bound.

use crate::{ExportError, Row};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use printpdf::{Mm, Op, ParsedFont, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt, TextItem};

pub const MAX_ROWS: u64 = 50_000;
const PAGE_W: f32 = 297.0;
const PAGE_H: f32 = 210.0;
const MARGIN: f32 = 10.0;
const LINE: f32 = 4.2;
const SIZE: f32 = 7.0;
/// Average advance of a DejaVu Sans Condensed glyph, in ems.
const EM_PER_CHAR: f32 = 0.62;

fn fit(text: &str, width_mm: f32) -> String {
    let width_pt = width_mm * 72.0 / 25.4;
    let max = ((width_pt / (SIZE * EM_PER_CHAR)) as usize).max(1);
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut s: String = flat.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn text_at(ops: &mut Vec<Op>, font: &PdfFontHandle, x: f32, y: f32, size: f32, text: String) {
    ops.push(Op::StartTextSection);
    ops.push(Op::SetTextCursor { pos: Point { x: Mm(x).into(), y: Mm(y).into() } });
    ops.push(Op::SetFont { font: font.clone(), size: Pt(size) });
    ops.push(Op::ShowText { items: vec![TextItem::Text(text)] });
    ops.push(Op::EndTextSection);
}

/// Writes `rows` as a PDF table through `sink`; returns the rows written.
pub async fn write<T, S, F, Fut>(title: &str, subtitle: &str, mut rows: S, mut sink: F) -> Result<u64, ExportError>
where
    T: Row,
    S: Stream<Item = Result<T, mongodb::error::Error>> + Unpin,
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut doc = PdfDocument::new(title);
    let mut warnings = Vec::new();
    let parsed = ParsedFont::from_bytes(dejavu::sans_condensed::regular(), 0, &mut warnings)
        .ok_or_else(|| ExportError::Encode("the embedded font cannot be read".into()))?;
    let font = PdfFontHandle::External(doc.add_font(&parsed));
    let columns = T::pdf_columns();
    let scale = (PAGE_W - 2.0 * MARGIN) / columns.iter().map(|(_, w)| w).sum::<f32>();
    let generated = natter_shared::timefmt::iso(mongodb::bson::DateTime::now());

    let mut pages = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut y = PAGE_H - MARGIN;
    let header_row = |ops: &mut Vec<Op>, y: f32| {
        let mut x = MARGIN;
        for (name, w) in columns {
            text_at(ops, &font, x, y, SIZE + 0.5, fit(&name.to_uppercase(), w * scale));
            x += w * scale;
        }
    };
    // Title block on the first page.
    text_at(&mut ops, &font, MARGIN, y - 6.0, 14.0, title.to_string());
    text_at(&mut ops, &font, MARGIN, y - 12.0, 8.0, fit(subtitle, PAGE_W - 2.0 * MARGIN));
    text_at(&mut ops, &font, MARGIN, y - 16.5, 8.0, format!("Generated {generated}"));
    y -= 24.0;
    header_row(&mut ops, y);
    y -= LINE;

    let mut n = 0u64;
    let mut more = 0u64;
    while let Some(row) = rows.try_next().await? {
        if n >= MAX_ROWS {
            more += 1;
            continue;
        }
        if y < MARGIN + LINE {
            pages.push(PdfPage::new(Mm(PAGE_W), Mm(PAGE_H), std::mem::take(&mut ops)));
            y = PAGE_H - MARGIN - 4.0;
            header_row(&mut ops, y);
            y -= LINE;
        }
        let mut x = MARGIN;
        for ((_, w), cell) in columns.iter().zip(row.pdf_cells()) {
            text_at(&mut ops, &font, x, y, SIZE, fit(&cell, w * scale));
            x += w * scale;
        }
        y -= LINE;
        n += 1;
    }
    if n == 0 {
        text_at(&mut ops, &font, MARGIN, y, SIZE, "No records match.".into());
    }
    if more > 0 {
        let note = format!("… and {more} more records: export as CSV or JSON for everything.");
        text_at(&mut ops, &font, MARGIN, (y - LINE).max(MARGIN), SIZE, note);
    }
    pages.push(PdfPage::new(Mm(PAGE_W), Mm(PAGE_H), ops));
    // Laying out and subsetting tens of thousands of rows takes seconds of
    // CPU: on a blocking thread, not one that serves connections.
    let bytes = tokio::task::spawn_blocking(move || {
        let opts = PdfSaveOptions { subset_fonts: true, ..Default::default() };
        let mut save_warnings = Vec::new();
        doc.with_pages(pages).save(&opts, &mut save_warnings)
    })
    .await
    .map_err(|e| ExportError::Encode(format!("PDF writer failed: {e}")))?;
    for chunk in bytes.chunks(64 * 1024) {
        if !sink(Bytes::copy_from_slice(chunk)).await {
            return Err(ExportError::Closed);
        }
    }
    Ok(n)
}
