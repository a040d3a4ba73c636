//! Reading one file's DICOM header, and nothing else.
//!
//! A file is DICOM when it has the `DICM` magic code after the 128-byte
//! preamble (DICOM part 10); anything else is not DICOM and is only counted.
//! The file meta group is read with dicom-rs (`dicom-object`), the data set
//! with its stateful decoder (`dicom-parser`), element by element: the few
//! attributes discovery uses are read, every other value is skipped unread
//! (sequences item by item), and reading stops at the first element at or
//! after (0028,0102), well before the pixel data and before the large
//! private groups scanners write after it (Siemens' CSA headers are in group
//! 0029). Building a whole in-memory object per file cost three times as
//! much, and discovery reads every file of every new session. Never more
//! than [`HEADER_LIMIT`] bytes are read from a file, whatever lengths it
//! declares: a 2 GB file costs what its header costs. Every failure is a
//! sentence for the user, never a panic.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use dicom_core::{Length, Tag};
use dicom_encoding::transfer_syntax::DynDecoder;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::FileMetaTable;
use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

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
    pub const SPECIFIC_CHARACTER_SET: Tag = Tag(0x0008, 0x0005);
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
    let consumed = Rc::new(Cell::new(0u64));
    let mut reader = Counting {
        inner: BufReader::with_capacity(8192, file.take(HEADER_LIMIT)),
        consumed: Rc::clone(&consumed),
    };
    // The first block is kept: it usually holds the pixel data's own header,
    // whose declared length tells a file cut short (see `pixel_data_end`).
    let head = match reader.inner.fill_buf() {
        Ok(buf) if buf.len() >= 132 && &buf[128..132] == b"DICM" => buf.to_vec(),
        Ok(_) => return FileHeader::NotDicom,
        Err(e) => return FileHeader::Corrupt(format!("cannot be read: {e}")),
    };
    reader.inner.consume(128);
    consumed.set(128);
    let meta = match FileMetaTable::from_reader(&mut reader) {
        Ok(meta) => meta,
        Err(e) => return FileHeader::Corrupt(read_error(&e, size, false)),
    };
    let uid = clean(meta.transfer_syntax());
    if meta.media_storage_sop_class_uid().trim_end_matches('\0') == DICOMDIR_SOP_CLASS {
        return FileHeader::Dicomdir;
    }
    let Some(ts) = TransferSyntaxRegistry.get(&uid) else {
        return FileHeader::Corrupt(format!(
            "header cannot be parsed (unknown transfer syntax {uid})"
        ));
    };
    if matches!(ts.codec(), Codec::Dataset(_)) || ts.is_unsupported() {
        return FileHeader::Corrupt(format!(
            "header cannot be parsed (unsupported transfer syntax {})",
            transfer_syntax_name(&uid)
        ));
    }
    let mut decoder = match StatefulDecoder::new_with_ts(&mut reader, ts, 0) {
        Ok(d) => d,
        Err(e) => return FileHeader::Corrupt(read_error(&e, size, false)),
    };
    let big_endian = uid == "1.2.840.10008.1.2.2";
    let mut values = Values::default();
    loop {
        let at = consumed.get();
        let header = match decoder.decode_header() {
            Ok(h) => h,
            // The data set ends at an element boundary.
            Err(_) if at == size.min(HEADER_LIMIT) => break,
            Err(e) => return FileHeader::Corrupt(read_error(&e, size, true)),
        };
        if header.tag >= STOP_AT {
            break;
        }
        let wanted = WANTED.contains(&header.tag);
        let outcome = match header.len.get() {
            Some(len) if wanted && len <= 4096 => {
                let mut bytes = Vec::with_capacity(len as usize);
                decoder
                    .read_to_vec(len, &mut bytes)
                    .map(|()| values.set(header.tag, bytes, big_endian))
                    .map_err(ParseError::from)
            }
            _ => skip_value(&mut decoder, header.len, 0, &consumed),
        };
        if let Err(e) = outcome {
            return FileHeader::Corrupt(read_error(&e, size, true));
        }
    }
    let stopped_at = usize::try_from(consumed.get()).unwrap_or(usize::MAX);
    describe(values, uid, size, &head, stopped_at)
}

/// Counts the bytes handed to the parser: where it stands in the file.
struct Counting<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

type Decoder<'a, R> = StatefulDecoder<DynDecoder<&'a mut R>, &'a mut R>;

/// Sequences nested deeper than this are refused (a file built to loop).
const MAX_DEPTH: u32 = 32;

/// Skips one element's value: its bytes, or for an undefined length (a
/// sequence), its items up to the sequence delimiter.
fn skip_value<R: Read>(
    decoder: &mut Decoder<'_, R>,
    length: Length,
    depth: u32,
    consumed: &Cell<u64>,
) -> Result<(), ParseError> {
    if let Some(len) = length.get() {
        return skip_exact(decoder, len, consumed);
    }
    if depth >= MAX_DEPTH {
        return Err(ParseError::Nested);
    }
    loop {
        let header = decoder.decode_header()?;
        match (header.tag, header.len.get()) {
            (SEQUENCE_DELIMITER, _) => return Ok(()),
            (ITEM, Some(len)) => skip_exact(decoder, len, consumed)?,
            (ITEM, None) => loop {
                let inner = decoder.decode_header()?;
                if inner.tag == ITEM_DELIMITER {
                    break;
                }
                skip_value(decoder, inner.len, depth + 1, consumed)?;
            },
            (ITEM_DELIMITER, _) => {}
            (tag, _) => return Err(ParseError::Unexpected(tag)),
        }
    }
}

/// Skips `len` bytes, or says the file ended first.
fn skip_exact<R: Read>(
    decoder: &mut Decoder<'_, R>,
    len: u32,
    consumed: &Cell<u64>,
) -> Result<(), ParseError> {
    let before = consumed.get();
    decoder.skip_bytes(len)?;
    if consumed.get() - before < u64::from(len) {
        return Err(ParseError::Truncated);
    }
    Ok(())
}

const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

/// The attributes read; every other value is skipped unread.
const WANTED: [Tag; 19] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::IMAGE_TYPE,
    tags::STUDY_DATE,
    tags::SERIES_DATE,
    tags::ACQUISITION_DATE,
    tags::ACCESSION_NUMBER,
    tags::MODALITY,
    tags::SERIES_DESCRIPTION,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PROTOCOL_NAME,
    tags::SERIES_INSTANCE_UID,
    tags::STUDY_ID,
    tags::SERIES_NUMBER,
    tags::SAMPLES_PER_PIXEL,
    tags::NUMBER_OF_FRAMES,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
];

#[derive(Debug)]
enum ParseError {
    Decode(dicom_parser::stateful::decode::Error),
    Nested,
    Unexpected(Tag),
    Truncated,
}

impl From<dicom_parser::stateful::decode::Error> for ParseError {
    fn from(e: dicom_parser::stateful::decode::Error) -> Self {
        ParseError::Decode(e)
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Decode(e) => write!(f, "{e}"),
            ParseError::Nested => write!(f, "sequences nested deeper than {MAX_DEPTH}"),
            ParseError::Unexpected(tag) => write!(f, "unexpected {tag} inside a sequence"),
            ParseError::Truncated => write!(f, "the file ends inside a value"),
        }
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParseError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

/// The raw values read, by tag.
#[derive(Default)]
struct Values {
    raw: Vec<(Tag, Vec<u8>)>,
    big_endian: bool,
}

impl Values {
    fn set(&mut self, tag: Tag, bytes: Vec<u8>, big_endian: bool) {
        self.big_endian = big_endian;
        self.raw.push((tag, bytes));
    }

    fn bytes(&self, tag: Tag) -> Option<&[u8]> {
        self.raw
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, b)| b.as_slice())
    }

    /// Text, decoded as UTF-8 when it is (ISO_IR 192, or plain ASCII), else
    /// as Latin-1 (ISO_IR 100, the usual single-byte set), then cleaned.
    fn text(&self, tag: Tag) -> String {
        match self.bytes(tag) {
            None => String::new(),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => clean(s),
                Err(_) => clean(&bytes.iter().map(|&b| b as char).collect::<String>()),
            },
        }
    }

    /// An IS value (text) as a number.
    fn int_text(&self, tag: Tag) -> Option<i64> {
        let text = self.text(tag);
        text.split('\\').next()?.trim().parse().ok()
    }

    /// A US value (binary, 2 bytes).
    fn us(&self, tag: Tag) -> Option<i64> {
        let b = self.bytes(tag)?;
        let pair = [*b.first()?, *b.get(1)?];
        Some(i64::from(if self.big_endian {
            u16::from_be_bytes(pair)
        } else {
            u16::from_le_bytes(pair)
        }))
    }
}

/// The error as a phrase: truncation and over-long headers said plainly, the
/// rest with dicom-rs's own words (cleaned: they can quote file bytes).
fn read_error(error: &(dyn std::error::Error + 'static), size: u64, in_data_set: bool) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
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
    let eof = eof
        || detail.contains("UnexpectedEof")
        || detail.contains("failed to fill")
        || detail.contains("the file ends inside a value");
    if eof && size > HEADER_LIMIT {
        format!(
            "header longer than {} MiB: not read further",
            HEADER_LIMIT / 1024 / 1024
        )
    } else if eof && in_data_set {
        "truncated: the file ends inside its header".to_string()
    } else {
        format!("header cannot be parsed ({detail})")
    }
}

fn describe(
    values: Values,
    transfer_syntax: String,
    size: u64,
    head: &[u8],
    stopped_at: usize,
) -> FileHeader {
    let series_uid = values.text(tags::SERIES_INSTANCE_UID);
    if series_uid.is_empty() {
        return FileHeader::Corrupt("no SeriesInstanceUID".to_string());
    }
    let image_type = values
        .text(tags::IMAGE_TYPE)
        .split('\\')
        .map(clean)
        .filter(|s| !s.is_empty())
        .collect();
    let date = [tags::ACQUISITION_DATE, tags::SERIES_DATE, tags::STUDY_DATE]
        .into_iter()
        .map(|t| values.text(t))
        .find(|d| !d.is_empty());
    let frames = values
        .int_text(tags::NUMBER_OF_FRAMES)
        .filter(|&n| n > 0)
        .unwrap_or(1) as u64;

    // The pixel data's declared end, when its header is in the first block.
    if let Some(end) = pixel_data_end(head, &transfer_syntax, stopped_at.saturating_sub(12))
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
            values.us(tags::ROWS),
            values.us(tags::COLUMNS),
            values.us(tags::BITS_ALLOCATED),
        )
    {
        let samples = values.us(tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1);
        let needed = (rows as u64)
            .saturating_mul(cols as u64)
            .saturating_mul(samples as u64)
            .saturating_mul((bits as u64).div_ceil(8))
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
        series_number: values.int_text(tags::SERIES_NUMBER),
        description: values.text(tags::SERIES_DESCRIPTION),
        protocol: values.text(tags::PROTOCOL_NAME),
        image_type,
        modality: values.text(tags::MODALITY),
        date,
        patient_id: values.text(tags::PATIENT_ID),
        patient_name: values.text(tags::PATIENT_NAME),
        accession_number: values.text(tags::ACCESSION_NUMBER),
        study_id: values.text(tags::STUDY_ID),
        frames,
        transfer_syntax,
    }))
}

/// Where the pixel data's value ends, by the first PixelData (7FE0,0010)
/// element header with a defined length found in `head` (the file's first
/// bytes) at or after `from` (where the header reading stopped, so that an
/// icon image's pixel data inside a sequence is not taken for the image's);
/// `None` when there is none (a long header, encapsulated data).
fn pixel_data_end(head: &[u8], transfer_syntax: &str, from: usize) -> Option<u64> {
    const TAG: [u8; 4] = [0xE0, 0x7F, 0x10, 0x00];
    let implicit = transfer_syntax == "1.2.840.10008.1.2";
    let mut from = from.max(132);
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
        let bytes = head.get(length_at..length_at + 4)?;
        let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        return (length != u32::MAX).then(|| value_at as u64 + u64::from(length));
    }
    None
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
