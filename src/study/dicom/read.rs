//! Reading one file's DICOM header, and nothing else.
//!
//! A file is DICOM when it has the `DICM` magic code after the 128-byte
//! preamble (DICOM part 10); anything else is not DICOM and is only counted. The data set is parsed with dicom-rs up to (not including) the
//! group-0028 attributes after `BitsStored`, well before the pixel data and
//! before the large private groups scanners write after it (Siemens' CSA
//! headers are in group 0029), and never more than [`HEADER_LIMIT`] bytes
//! are read from a file, whatever lengths it declares: a 2 GB file costs
//! what its header costs. Every failure is a sentence for the user, never a
//! panic.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};

use super::text::clean;

/// At most this many bytes of a file are read.
pub const HEADER_LIMIT: u64 = 16 * 1024 * 1024;

/// Parsing stops at the first element at or after this tag.
const STOP_AT: Tag = Tag(0x0028, 0x0102);

const DICOMDIR_SOP_CLASS: &str = "1.2.840.10008.1.3.10";

/// What one file turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum FileHeader {
    Dicom(Box<Instance>),
    /// No `DICM` magic code at byte 128: not a DICOM file (a PDF, a text
    /// note, a raw data set without the part-10 file header).
    NotDicom,
    /// A DICOM media directory: an index of the other files, not an image.
    Dicomdir,
    /// It says it is DICOM, but its header cannot be used: why, as a phrase.
    Corrupt(String),
}

/// The attributes discovery uses, cleaned (see [`clean`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instance {
    pub series_uid: String,
    pub series_number: Option<i64>,
    pub description: String,
    pub protocol: String,
    pub image_type: Vec<String>,
    pub modality: String,
    /// AcquisitionDate, else SeriesDate, else StudyDate (`YYYYMMDD`).
    pub date: Option<String>,
    pub patient_id: String,
    pub patient_name: String,
    pub accession_number: String,
    pub study_id: String,
    /// NumberOfFrames, 1 when absent.
    pub frames: u64,
    pub transfer_syntax: String,
}

mod tags {
    use dicom_object::Tag;
    pub const IMAGE_TYPE: Tag = Tag(0x0008, 0x0008);
    pub const STUDY_DATE: Tag = Tag(0x0008, 0x0020);
    pub const SERIES_DATE: Tag = Tag(0x0008, 0x0021);
    pub const ACQUISITION_DATE: Tag = Tag(0x0008, 0x0022);
    pub const ACCESSION_NUMBER: Tag = Tag(0x0008, 0x0050);
    pub const MODALITY: Tag = Tag(0x0008, 0x0060);
    pub const SERIES_DESCRIPTION: Tag = Tag(0x0008, 0x103E);
    pub const PATIENT_NAME: Tag = Tag(0x0010, 0x0010);
    pub const PATIENT_ID: Tag = Tag(0x0010, 0x0020);
    pub const PROTOCOL_NAME: Tag = Tag(0x0018, 0x1030);
    pub const SERIES_INSTANCE_UID: Tag = Tag(0x0020, 0x000E);
    pub const STUDY_ID: Tag = Tag(0x0020, 0x0010);
    pub const SERIES_NUMBER: Tag = Tag(0x0020, 0x0011);
    pub const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
    pub const ROWS: Tag = Tag(0x0028, 0x0010);
    pub const COLUMNS: Tag = Tag(0x0028, 0x0011);
    pub const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
    pub const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
}

/// Reads the header of the file at `path`, `size` bytes long (from the walk's
/// stat: used to tell a file cut short inside its pixel data).
pub fn read_file(path: &Path, size: u64) -> FileHeader {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return FileHeader::Corrupt(format!("cannot be opened: {e}")),
    };
    let mut reader = BufReader::with_capacity(8192, file.take(HEADER_LIMIT));
    // The first block is kept: it usually holds the pixel data's own header,
    // whose declared length tells a file cut short (see `pixel_data_end`).
    let head = match reader.fill_buf() {
        Ok(buf) if buf.len() >= 132 && &buf[128..132] == b"DICM" => buf.to_vec(),
        Ok(_) => return FileHeader::NotDicom,
        Err(e) => return FileHeader::Corrupt(format!("cannot be read: {e}")),
    };
    let preamble = ReadPreamble::Always;
    let object = OpenFileOptions::new()
        .read_preamble(preamble)
        .read_until(STOP_AT)
        .from_reader(reader);
    match object {
        Ok(object) => describe(&object, size, &head),
        Err(e) => FileHeader::Corrupt(read_error(&e, size)),
    }
}

/// The error as a phrase: truncation and over-long headers said plainly, the
/// rest with dicom-rs's own words (cleaned: they can quote file bytes).
fn read_error(error: &dicom_object::ReadError, size: u64) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    let mut eof = false;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            eof |= io.kind() == std::io::ErrorKind::UnexpectedEof;
        }
        let text = e.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        source = e.source();
    }
    let detail = clean(&chain.join(": "));
    if eof && size > HEADER_LIMIT {
        format!(
            "header longer than {} MiB: not read further",
            HEADER_LIMIT / 1024 / 1024
        )
    } else if eof || detail.contains("UnexpectedEof") || detail.contains("failed to fill") {
        "truncated: the file ends inside its header".to_string()
    } else {
        format!("header cannot be parsed ({detail})")
    }
}

fn describe(object: &DefaultDicomObject, size: u64, head: &[u8]) -> FileHeader {
    let meta = object.meta();
    if meta.media_storage_sop_class_uid().trim_end_matches('\0') == DICOMDIR_SOP_CLASS {
        return FileHeader::Dicomdir;
    }
    let text = |tag: Tag| -> String {
        object
            .get(tag)
            .and_then(|e| e.value().to_str().ok().map(|s| clean(&s)))
            .unwrap_or_default()
    };
    let int =
        |tag: Tag| -> Option<i64> { object.get(tag).and_then(|e| e.value().to_int::<i64>().ok()) };
    let series_uid = text(tags::SERIES_INSTANCE_UID);
    if series_uid.is_empty() {
        return FileHeader::Corrupt("no SeriesInstanceUID".to_string());
    }
    let image_type = object
        .get(tags::IMAGE_TYPE)
        .and_then(|e| e.value().to_multi_str().ok().map(|v| v.to_vec()))
        .unwrap_or_default()
        .iter()
        .map(|s| clean(s))
        .filter(|s| !s.is_empty())
        .collect();
    let date = [tags::ACQUISITION_DATE, tags::SERIES_DATE, tags::STUDY_DATE]
        .into_iter()
        .map(text)
        .find(|d| !d.is_empty());
    let frames = int(tags::NUMBER_OF_FRAMES).filter(|&n| n > 0).unwrap_or(1) as u64;
    let transfer_syntax = clean(meta.transfer_syntax());

    // The pixel data's declared end, when its header is in the first block.
    if let Some(end) = pixel_data_end(head, &transfer_syntax)
        && end > size
    {
        return FileHeader::Corrupt(format!(
            "truncated: {size} bytes long, but its pixel data end at byte {end}"
        ));
    }
    // A native (uncompressed) image needs rows × columns × samples × bytes
    // per frame: a file shorter than that was cut short in a copy.
    if is_native(&transfer_syntax)
        && let (Some(rows), Some(cols), Some(bits)) = (
            int(tags::ROWS),
            int(tags::COLUMNS),
            int(tags::BITS_ALLOCATED),
        )
    {
        let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1);
        let needed = (rows.max(0) as u64)
            .saturating_mul(cols.max(0) as u64)
            .saturating_mul(samples as u64)
            .saturating_mul((bits.max(0) as u64).div_ceil(8))
            .saturating_mul(frames);
        if needed > size {
            return FileHeader::Corrupt(format!(
                "truncated: {size} bytes long, but its {rows}×{cols} {bits}-bit image{} alone needs {needed}",
                if frames > 1 {
                    format!(" of {frames} frames")
                } else {
                    String::new()
                }
            ));
        }
    }

    FileHeader::Dicom(Box::new(Instance {
        series_uid,
        series_number: int(tags::SERIES_NUMBER),
        description: text(tags::SERIES_DESCRIPTION),
        protocol: text(tags::PROTOCOL_NAME),
        image_type,
        modality: text(tags::MODALITY),
        date,
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        accession_number: text(tags::ACCESSION_NUMBER),
        study_id: text(tags::STUDY_ID),
        frames,
        transfer_syntax,
    }))
}

/// Where the pixel data's value ends, by the last PixelData (7FE0,0010)
/// element header found in `head` (the file's first bytes) with a defined
/// length; `None` when there is none (a long header, encapsulated data).
fn pixel_data_end(head: &[u8], transfer_syntax: &str) -> Option<u64> {
    const TAG: [u8; 4] = [0xE0, 0x7F, 0x10, 0x00];
    let implicit = transfer_syntax == "1.2.840.10008.1.2";
    let mut found = None;
    let mut from = 132;
    while let Some(at) = head.get(from..)?.windows(4).position(|w| w == TAG) {
        let p = from + at;
        let (length_at, value_at) = if implicit {
            (p + 4, p + 8)
        } else if head
            .get(p + 4..p + 6)
            .is_some_and(|vr| vr == b"OW" || vr == b"OB")
        {
            (p + 8, p + 12)
        } else {
            from = p + 1;
            continue;
        };
        if let Some(bytes) = head.get(length_at..length_at + 4) {
            let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if length != u32::MAX {
                found = Some(value_at as u64 + u64::from(length));
            }
        }
        from = p + 1;
    }
    found
}

/// The uncompressed transfer syntaxes, whose pixel data size is known.
fn is_native(uid: &str) -> bool {
    matches!(
        uid,
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
    )
}

/// A transfer syntax's usual name, for the user; the UID when not a common one.
pub fn transfer_syntax_name(uid: &str) -> String {
    let name = match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        "1.2.840.10008.1.2.4.201" => "HTJ2K Lossless",
        "1.2.840.10008.1.2.4.203" => "HTJ2K",
        other => return other.to_string(),
    };
    name.to_string()
}

/// Whether the pixel data are compressed (anything but the native syntaxes).
pub fn is_compressed(uid: &str) -> bool {
    !is_native(uid) && uid != "1.2.840.10008.1.2.1.99"
}
