//! The DICOM keys of `discovery`: `dicom`, `mapping.scan_id_from` and the
//! header-aware keys of `required_series` items.

use super::error::ConfigError;
use super::types::{DicomMode, MatchOn, ScanIdFrom};
use super::yaml::{Ctx, Map, Val};
use crate::study::dicom::HeaderKey;

fn bad(ctx: &Ctx, v: &Val, message: String, hint: &str) -> ConfigError {
    ctx.src.at(v.loc(), v.path, message, Some(hint.to_string()))
}

pub(super) fn read_mode(ctx: &Ctx, v: &Val) -> Result<DicomMode, ConfigError> {
    Ok(match v.raw_str(ctx)? {
        "auto" => DicomMode::Auto,
        "headers" => DicomMode::Headers,
        "off" => DicomMode::Off,
        other => {
            return Err(bad(
                ctx,
                v,
                format!(
                    "`{}` must be `auto`, `headers` or `off`, found `{other}`",
                    v.path
                ),
                "`headers` reads every session's DICOM headers; `off` only counts files",
            ));
        }
    })
}

pub(super) fn read_scan_id_from(ctx: &Ctx, v: &Val) -> Result<ScanIdFrom, ConfigError> {
    let text = v.raw_str(ctx)?;
    if text == "folder" {
        return Ok(ScanIdFrom::Folder);
    }
    match text.strip_prefix("header:").and_then(HeaderKey::parse) {
        Some(key) => Ok(ScanIdFrom::Header(key)),
        None => Err(bad(
            ctx,
            v,
            format!(
                "`{}` must be `folder` or `header:` followed by PatientID, AccessionNumber, StudyID or PatientName, found `{text}`",
                v.path
            ),
            "for example `scan_id_from: header:PatientID`",
        )),
    }
}

/// The optional keys of one `required_series` item.
pub(super) struct SeriesDicomKeys {
    pub match_on: MatchOn,
    pub min_instances: Option<u64>,
    pub image_type: Vec<String>,
    pub max_series: Option<u64>,
}

pub(super) fn read_series_keys(ctx: &Ctx, m: &Map) -> Result<SeriesDicomKeys, ConfigError> {
    let match_on = match m.get("match_on") {
        None => MatchOn::Header,
        Some(v) => match v.raw_str(ctx)? {
            "header" => MatchOn::Header,
            "folder" => MatchOn::Folder,
            other => {
                return Err(bad(
                    ctx,
                    &v,
                    format!("`{}` must be `header` or `folder`, found `{other}`", v.path),
                    "`header` matches SeriesDescription or ProtocolName; `folder` the subfolder names",
                ));
            }
        },
    };
    let min_instances = m.get("min_instances").map(|v| v.uint(ctx)).transpose()?;
    let max_series = match m.get("max_series") {
        None => None,
        Some(v) => {
            let n = v.uint(ctx)?;
            if n == 0 {
                return Err(bad(
                    ctx,
                    &v,
                    format!("`{}` must be at least 1", v.path),
                    "a required series must be allowed to appear once",
                ));
            }
            Some(n)
        }
    };
    let image_type = match m.get("image_type") {
        None => Vec::new(),
        Some(v) => match v.as_seq() {
            Some(_) => v.string_list(ctx)?,
            None => vec![v.raw_str(ctx)?.to_string()],
        },
    };
    Ok(SeriesDicomKeys {
        match_on,
        min_instances,
        image_type: image_type.iter().map(|t| t.trim().to_uppercase()).collect(),
        max_series,
    })
}
