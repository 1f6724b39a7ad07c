//! Piko's log format: one JSON object per line on stderr, as zap's production encoder writes
//! it: `level`, `ts` (UTC, milliseconds, trailing zeros trimmed), `subsystem`, `msg`, then the
//! event's fields with dashed names (`endpoint-id`). Scripts and log pipelines written for Piko
//! keep working. Lines reach stderr through [`log_sink`](crate::log_sink).

use std::{
    cell::RefCell,
    fmt,
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Piko's JSON lines.
    Json,
    /// `<ts> <LEVEL> <subsystem>: <msg> key=value ...`, for people reading a terminal.
    Text,
}

/// A `log.level` value.
pub(crate) fn parse_level(level: &str) -> Result<Level, String> {
    match level {
        "debug" => Ok(Level::DEBUG),
        "info" => Ok(Level::INFO),
        "warn" => Ok(Level::WARN),
        "error" => Ok(Level::ERROR),
        "" => Err("missing level".into()),
        other => Err(format!("unsupported log level: {other}")),
    }
}

/// Installs the logger for the process. Events of the `subsystems` named (exact names, as
/// Piko matches them) are written at every level, whatever `level` says.
pub(crate) fn init(level: &str, subsystems: Vec<String>, format: Format) -> Result<(), String> {
    let level = parse_level(level)?;
    // A panic ends the process before the writer's next batch: the lines before it come first.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        crate::log_sink::flush();
        report_panic(info);
    }));
    tracing_subscriber::registry()
        .with(Lines {
            level,
            subsystems,
            format,
        })
        .try_init()
        .map_err(|err| err.to_string())
}

struct Lines {
    level: Level,
    subsystems: Vec<String>,
    format: Format,
}

impl Lines {
    /// The level below which nothing is built at all: `debug` when some subsystem wants every
    /// level (the subsystem is a field, known only once the event is recorded).
    fn floor(&self) -> Level {
        if self.subsystems.is_empty() {
            self.level
        } else {
            Level::DEBUG
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    subsystem: Option<String>,
    rest: Vec<(String, FieldValue)>,
}

enum FieldValue {
    Json(Value),
    /// Text that is already a JSON object (the access log's record), written as it is.
    RawJson(String),
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_value(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_value(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_value(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_value(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_value(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no infinity or NaN: those are written as text, as Go's zap does.
        let number = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.record_value(field, number);
    }
}

impl Fields {
    fn record_value(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(text)) => self.message = text,
            ("subsystem", Value::String(text)) => self.subsystem = Some(text),
            // The access log's record, already a JSON object: nested as Piko nests it, under
            // `request`, without being parsed and serialised again.
            ("access_record", Value::String(text)) => {
                self.rest
                    .push(("request".into(), FieldValue::RawJson(text)));
            }
            (name, value) => {
                self.rest
                    .push((name.replace('_', "-"), FieldValue::Json(value)));
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for Lines {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.floor() && metadata.target().starts_with("piko")
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG | Level::TRACE => "debug",
        };
        let Fields {
            message,
            subsystem,
            rest,
        } = fields;
        let subsystem = subsystem.unwrap_or_else(|| "main".into());
        if *event.metadata().level() > self.level && !self.subsystems.contains(&subsystem) {
            return;
        }
        let ts = timestamp(SystemTime::now());
        LINE.with_borrow_mut(|line| {
            line.clear();
            match self.format {
                Format::Json => {
                    let head = [
                        ("level", level),
                        ("ts", ts.as_str()),
                        ("subsystem", subsystem.as_str()),
                        ("msg", message.as_str()),
                    ];
                    write_json(line, head, &rest);
                }
                Format::Text => write_text(line, [level, &ts, &subsystem, &message], rest),
            }
            line.push(b'\n');
            crate::log_sink::write_line(line);
        });
    }
}

thread_local! {
    /// Each thread builds its lines in one buffer, reused.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `{"level":..,"ts":..,"subsystem":..,"msg":.., fields...}`, in zap's order.
fn write_json(line: &mut Vec<u8>, head: [(&str, &str); 4], rest: &[(String, FieldValue)]) {
    for (i, (key, value)) in head.into_iter().enumerate() {
        line.push(if i == 0 { b'{' } else { b',' });
        push_key(line, key);
        let _ = serde_json::to_writer(&mut *line, value);
    }
    for (key, value) in rest {
        line.push(b',');
        push_key(line, key);
        match value {
            FieldValue::Json(value) => {
                let _ = serde_json::to_writer(&mut *line, value);
            }
            FieldValue::RawJson(text) => line.extend_from_slice(text.as_bytes()),
        }
    }
    line.push(b'}');
}

fn push_key(line: &mut Vec<u8>, key: &str) {
    let _ = serde_json::to_writer(&mut *line, key);
    line.push(b':');
}

/// `<ts> <LEVEL> <subsystem>: <msg> key=value ...`.
fn write_text(
    line: &mut Vec<u8>,
    [level, ts, subsystem, message]: [&str; 4],
    rest: Vec<(String, FieldValue)>,
) {
    let _ = write!(
        line,
        "{ts} {:<5} {subsystem}: {message}",
        level.to_uppercase()
    );
    for (key, value) in rest {
        let _ = match value {
            FieldValue::Json(Value::String(text)) | FieldValue::RawJson(text) => {
                write!(line, " {key}={text}")
            }
            FieldValue::Json(other) => write!(line, " {key}={other}"),
        };
    }
}

/// `2006-01-02T15:04:05.999Z` in UTC.
fn timestamp(now: SystemTime) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let millis = since_epoch.subsec_millis();
    let fraction = if millis == 0 {
        String::new()
    } else {
        format!(".{millis:03}").trim_end_matches('0').to_owned()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_zap_s() {
        let at = |secs: u64, millis: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        assert_eq!(timestamp(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(at(1_769_353_617, 120)), "2026-01-25T15:06:57.12Z");
        assert_eq!(timestamp(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
    }
}
