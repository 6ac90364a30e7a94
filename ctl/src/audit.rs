//! The audit trail from the command line: `verify` walks the hash chain
//! against the head the audit worker records; `export` writes it to a file
//! with a progress bar.

use crate::{ExportArgs, out};
use anyhow::Context;
use natter_nats::Subjects;
use natter_shared::audit::Verdict;
use natter_shared::store::Store;

/// Walks the chain against the recorded head. The worker may append while
/// the trail is read: a record past the head counts only if the head has
/// not moved past it since (read again, up to five times).
pub async fn verify(
    store: &Store,
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
) -> anyhow::Result<Verdict> {
    let kv = js.get_key_value(subjects.audit_head_bucket()).await?;
    let read_head = || async {
        anyhow::Ok(match kv.get("head").await? {
            Some(v) => {
                Some(serde_json::from_slice::<natter_shared::audit::Head>(&v).context("the recorded audit head")?)
            }
            None => None,
        })
    };
    let mut tries = 0;
    loop {
        let head = read_head().await?;
        let verdict = natter_shared::audit::verify(&store.audit(), head.as_ref()).await?;
        tries += 1;
        let moved = read_head().await? != head;
        if !(moved && matches!(verdict, Verdict::Broken(_))) || tries >= 5 {
            return Ok(verdict);
        }
    }
}

/// Writes the records the filter selects to `--out`.
pub async fn export(a: ExportArgs) -> anyhow::Result<()> {
    let ExportArgs { format, out: path, action, actor, conversation_id, group_id, target, from, to } = a;
    use natter_export::{self as export, Format};
    use std::io::Write;
    let fmt = Format::parse(&format).ok_or_else(|| anyhow::anyhow!("--format must be pdf, csv or json"))?;
    let date = |v: Option<String>, name: &str| -> anyhow::Result<Option<mongodb::bson::DateTime>> {
        v.map(|s| {
            mongodb::bson::DateTime::parse_rfc3339_str(&s).with_context(|| format!("--{name} is not a date-time"))
        })
        .transpose()
    };
    let filter = natter_shared::audit::Filter {
        action,
        actor,
        conversation_id,
        group_id,
        target,
        from: date(from, "from")?,
        to: date(to, "to")?,
    };
    let core = natter_shared::config::CoreConfig::load(&natter_shared::config::Env)?;
    let store = Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
    // The whole trail's length bounds what a filter can match.
    let total = natter_shared::audit::head(&store.audit()).await?.map_or(0, |(last, _)| last.max(0) as u64);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let rows = export::audit_rows(&store, &filter).await?;
    let counted = {
        let bar = bar.clone();
        futures::StreamExt::inspect(rows, move |_| bar.inc(1))
    };
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?);
    let mut failed: Option<std::io::Error> = None;
    let sink = |b: bytes::Bytes| {
        let ok = match file.write_all(&b) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        };
        async move { ok }
    };
    let n = match fmt {
        Format::Pdf => {
            let subtitle = format!("Filters: {}", filter.describe());
            natter_export::pdf::write("natter audit trail", &subtitle, counted, sink).await
        }
        _ => export::write(fmt, counted, sink).await,
    };
    if let Some(e) = failed {
        return Err(e).context("writing the export");
    }
    let n = n?;
    file.flush()?;
    bar.finish_and_clear();
    out(&format!("exported {n} records to {}", path.display()));
    store.close().await;
    Ok(())
}
