//! Writing real DICOM sessions: for the demo, the tests and the benchmark.
//!
//! Every file is a complete MR image in Explicit VR Little Endian, written
//! with dicom-rs: file meta group, patient, study and series attributes, the
//! geometry a converter needs (ImagePositionPatient, ImageOrientationPatient,
//! PixelSpacing, SliceThickness), timing (EchoTime, RepetitionTime) and the
//! pixel data. Diffusion series carry b-values and gradient directions in the
//! standard attributes (0018,9087) and (0018,9089), one volume per
//! direction. A session can be laid out flat (`IM0001…` in one folder, the
//! series known only from the headers) or nested (one subfolder per series).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use dicom_core::smallvec::SmallVec;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// One series to write.
#[derive(Debug, Clone)]
pub struct SeriesSpec {
    pub number: i64,
    pub description: String,
    pub protocol: String,
    pub image_type: Vec<String>,
    pub rows: u16,
    pub columns: u16,
    pub slices: u32,
    /// One volume per entry: (b-value, gradient direction). Empty: a
    /// structural series of one volume.
    pub diffusion: Vec<(f64, [f64; 3])>,
    pub echo_time_ms: f64,
    pub repetition_time_ms: f64,
}

impl SeriesSpec {
    /// A small T1-weighted structural series.
    pub fn t1(number: i64, slices: u32) -> SeriesSpec {
        SeriesSpec {
            number,
            description: "T1_MPRAGE".to_string(),
            protocol: "t1_mprage_sag".to_string(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "M".into(), "ND".into()],
            rows: 16,
            columns: 16,
            slices,
            diffusion: Vec::new(),
            echo_time_ms: 2.98,
            repetition_time_ms: 2300.0,
        }
    }

    /// A diffusion series: one b=0 volume, then `directions` volumes at
    /// b=1000 s/mm² along evenly spread directions.
    pub fn dwi(number: i64, slices: u32, directions: usize) -> SeriesSpec {
        let mut diffusion = vec![(0.0, [0.0, 0.0, 0.0])];
        for d in 0..directions {
            let angle = std::f64::consts::PI * d as f64 / directions.max(1) as f64;
            let z = if d % 2 == 0 { 0.3 } else { -0.3 };
            let r = (1.0f64 - z * z).sqrt();
            diffusion.push((1000.0, [r * angle.cos(), r * angle.sin(), z]));
        }
        SeriesSpec {
            number,
            description: "DWI_dir".to_string() + &directions.to_string(),
            protocol: "ep2d_diff_AP".to_string(),
            image_type: vec![
                "ORIGINAL".into(),
                "PRIMARY".into(),
                "DIFFUSION".into(),
                "NONE".into(),
            ],
            rows: 16,
            columns: 16,
            slices,
            diffusion,
            echo_time_ms: 89.0,
            repetition_time_ms: 3200.0,
        }
    }

    fn volumes(&self) -> usize {
        self.diffusion.len().max(1)
    }

    /// Files this series writes.
    pub fn files(&self) -> u64 {
        self.volumes() as u64 * self.slices as u64
    }
}

/// How a session's files are laid out in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every file in the session folder, named `IM00001`, `IM00002`, …
    Flat,
    /// One subfolder per series, named after the description.
    Nested,
}

/// One session to write.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub patient_id: String,
    pub patient_name: String,
    pub accession_number: String,
    pub study_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub series: Vec<SeriesSpec>,
    pub layout: Layout,
}

impl SessionSpec {
    /// A T1 series of `slices` slices and a DWI series of 1 + `directions`
    /// volumes of `slices` slices each.
    pub fn t1_and_dwi(patient_id: &str, slices: u32, directions: usize, layout: Layout) -> Self {
        SessionSpec {
            patient_id: patient_id.to_string(),
            patient_name: format!("Synthetic^{patient_id}"),
            accession_number: format!("ACC{patient_id}"),
            study_id: "1".to_string(),
            date: "20260315".to_string(),
            series: vec![
                SeriesSpec::t1(2, slices),
                SeriesSpec::dwi(5, slices, directions),
            ],
            layout,
        }
    }
}

/// A UID under the `2.25` root (a UUID as a decimal number), derived from
/// `parts` so that the same spec always writes the same UIDs.
fn uid(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(parts.join("\u{0}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!("2.25.{}", u128::from_be_bytes(bytes) >> 1)
}

fn strs(values: &[String]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().cloned().collect::<SmallVec<_>>())
}

fn ds(values: &[f64]) -> PrimitiveValue {
    let texts: Vec<String> = values.iter().map(|v| format_ds(*v)).collect();
    strs(&texts)
}

/// A decimal string of at most 16 characters.
fn format_ds(v: f64) -> String {
    let text = format!("{v:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    if text == "-0" { "0".to_string() } else { text }
}

/// Writes the session under `folder` (created) and returns the files written.
pub fn write_session(folder: &Path, spec: &SessionSpec) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(folder)?;
    let study_uid = uid(&[
        "study",
        &spec.patient_id,
        &spec.accession_number,
        &spec.date,
    ]);
    let mut written = Vec::new();
    let mut counter = 0u32;
    for series in &spec.series {
        let series_uid = uid(&[&study_uid, "series", &series.number.to_string()]);
        let dir = match spec.layout {
            Layout::Flat => folder.to_path_buf(),
            Layout::Nested => folder.join(format!("{:03}_{}", series.number, series.description)),
        };
        fs::create_dir_all(&dir)?;
        for volume in 0..series.volumes() {
            for slice in 0..series.slices {
                counter += 1;
                let instance = volume as u32 * series.slices + slice + 1;
                let path = match spec.layout {
                    Layout::Flat => dir.join(format!("IM{counter:05}")),
                    Layout::Nested => dir.join(format!("IM{instance:05}.dcm")),
                };
                write_instance(&path, spec, series, &study_uid, &series_uid, volume, slice)?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

fn write_instance(
    path: &Path,
    session: &SessionSpec,
    series: &SeriesSpec,
    study_uid: &str,
    series_uid: &str,
    volume: usize,
    slice: u32,
) -> io::Result<()> {
    let instance_number = volume as u32 * series.slices + slice + 1;
    let sop_uid = uid(&[series_uid, &instance_number.to_string()]);
    let spacing = 2.0;
    let position = [
        -(series.columns as f64) * spacing / 2.0,
        -(series.rows as f64) * spacing / 2.0,
        slice as f64 * spacing - series.slices as f64,
    ];
    let acquisition_time = format!("10{:02}{:02}.000000", 10 + series.number % 40, volume % 60);
    let s = |text: &str| PrimitiveValue::from(text);
    let mut elements = vec![
        DataElement::new(Tag(0x0008, 0x0005), VR::CS, s("ISO_IR 100")),
        DataElement::new(Tag(0x0008, 0x0008), VR::CS, strs(&series.image_type)),
        DataElement::new(Tag(0x0008, 0x0016), VR::UI, s(MR_IMAGE_STORAGE)),
        DataElement::new(Tag(0x0008, 0x0018), VR::UI, s(&sop_uid)),
        DataElement::new(Tag(0x0008, 0x0020), VR::DA, s(&session.date)),
        DataElement::new(Tag(0x0008, 0x0021), VR::DA, s(&session.date)),
        DataElement::new(Tag(0x0008, 0x0022), VR::DA, s(&session.date)),
        DataElement::new(Tag(0x0008, 0x0030), VR::TM, s("100000.000000")),
        DataElement::new(Tag(0x0008, 0x0032), VR::TM, s(&acquisition_time)),
        DataElement::new(Tag(0x0008, 0x0050), VR::SH, s(&session.accession_number)),
        DataElement::new(Tag(0x0008, 0x0060), VR::CS, s("MR")),
        DataElement::new(Tag(0x0008, 0x0070), VR::LO, s("nfslurm synthetic")),
        DataElement::new(Tag(0x0008, 0x103E), VR::LO, s(&series.description)),
        DataElement::new(Tag(0x0008, 0x1090), VR::LO, s("nfslurm synth")),
        DataElement::new(Tag(0x0010, 0x0010), VR::PN, s(&session.patient_name)),
        DataElement::new(Tag(0x0010, 0x0020), VR::LO, s(&session.patient_id)),
        DataElement::new(
            Tag(0x0018, 0x0020),
            VR::CS,
            s(if series.diffusion.is_empty() {
                "GR\\IR"
            } else {
                "EP"
            }),
        ),
        DataElement::new(
            Tag(0x0018, 0x0023),
            VR::CS,
            s(if series.diffusion.is_empty() {
                "3D"
            } else {
                "2D"
            }),
        ),
        DataElement::new(Tag(0x0018, 0x0050), VR::DS, ds(&[spacing])),
        DataElement::new(
            Tag(0x0018, 0x0080),
            VR::DS,
            ds(&[series.repetition_time_ms]),
        ),
        DataElement::new(Tag(0x0018, 0x0081), VR::DS, ds(&[series.echo_time_ms])),
        DataElement::new(Tag(0x0018, 0x0087), VR::DS, ds(&[3.0])),
        DataElement::new(Tag(0x0018, 0x0088), VR::DS, ds(&[spacing])),
        DataElement::new(Tag(0x0018, 0x1030), VR::LO, s(&series.protocol)),
        DataElement::new(
            Tag(0x0018, 0x1314),
            VR::DS,
            ds(&[if series.diffusion.is_empty() {
                9.0
            } else {
                90.0
            }]),
        ),
        DataElement::new(Tag(0x0018, 0x5100), VR::CS, s("HFS")),
    ];
    if let Some((b, direction)) = series.diffusion.get(volume) {
        elements.push(DataElement::new(
            Tag(0x0018, 0x9075),
            VR::CS,
            s(if *b == 0.0 { "NONE" } else { "DIRECTIONAL" }),
        ));
        elements.push(DataElement::new(
            Tag(0x0018, 0x9087),
            VR::FD,
            PrimitiveValue::from(*b),
        ));
        if *b != 0.0 {
            elements.push(DataElement::new(
                Tag(0x0018, 0x9089),
                VR::FD,
                PrimitiveValue::F64(direction.iter().copied().collect()),
            ));
        }
    }
    elements.extend([
        DataElement::new(Tag(0x0020, 0x000D), VR::UI, s(study_uid)),
        DataElement::new(Tag(0x0020, 0x000E), VR::UI, s(series_uid)),
        DataElement::new(Tag(0x0020, 0x0010), VR::SH, s(&session.study_id)),
        DataElement::new(Tag(0x0020, 0x0011), VR::IS, s(&series.number.to_string())),
        DataElement::new(Tag(0x0020, 0x0012), VR::IS, s("1")),
        DataElement::new(Tag(0x0020, 0x0013), VR::IS, s(&instance_number.to_string())),
        DataElement::new(Tag(0x0020, 0x0032), VR::DS, ds(&position)),
        DataElement::new(
            Tag(0x0020, 0x0037),
            VR::DS,
            ds(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ),
        DataElement::new(Tag(0x0020, 0x0052), VR::UI, s(&uid(&[study_uid, "frame"]))),
        DataElement::new(Tag(0x0020, 0x0100), VR::IS, s(&(volume + 1).to_string())),
        DataElement::new(Tag(0x0020, 0x1041), VR::DS, ds(&[position[2]])),
        DataElement::new(Tag(0x0028, 0x0002), VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(Tag(0x0028, 0x0004), VR::CS, s("MONOCHROME2")),
        DataElement::new(
            Tag(0x0028, 0x0010),
            VR::US,
            PrimitiveValue::from(series.rows),
        ),
        DataElement::new(
            Tag(0x0028, 0x0011),
            VR::US,
            PrimitiveValue::from(series.columns),
        ),
        DataElement::new(Tag(0x0028, 0x0030), VR::DS, ds(&[spacing, spacing])),
        DataElement::new(Tag(0x0028, 0x0100), VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(Tag(0x0028, 0x0101), VR::US, PrimitiveValue::from(12u16)),
        DataElement::new(Tag(0x0028, 0x0102), VR::US, PrimitiveValue::from(11u16)),
        DataElement::new(Tag(0x0028, 0x0103), VR::US, PrimitiveValue::from(0u16)),
    ]);
    // A bright ball whose brightness falls with the b-value, so the images
    // are not flat.
    let (rows, cols) = (series.rows as i32, series.columns as i32);
    let b = series.diffusion.get(volume).map_or(0.0, |(b, _)| *b);
    let scale = (-b / 1000.0 * 0.7).exp();
    let mut pixels: Vec<u16> = Vec::with_capacity((rows * cols) as usize);
    for r in 0..rows {
        for c in 0..cols {
            let dr = r - rows / 2;
            let dc = c - cols / 2;
            let dz = slice as i32 - series.slices as i32 / 2;
            let inside = dr * dr + dc * dc + dz * dz <= (rows / 2) * (rows / 2);
            let value = if inside {
                1000.0 * scale + (r + c) as f64
            } else {
                20.0
            };
            pixels.push(value as u16);
        }
    }
    elements.push(DataElement::new(
        Tag(0x7FE0, 0x0010),
        VR::OW,
        PrimitiveValue::U16(pixels.into_iter().collect()),
    ));
    let object = InMemDicomObject::from_element_iter(elements);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_VR_LE)
        .media_storage_sop_class_uid(MR_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop_uid.as_str())
        .implementation_class_uid(uid(&["nfslurm", "implementation"]))
        .build()
        .map_err(io::Error::other)?;
    object
        .with_exact_meta(meta)
        .write_to_file(path)
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::dicom::summarize;

    #[test]
    fn written_sessions_read_back_as_two_series_in_either_layout() {
        for layout in [Layout::Flat, Layout::Nested] {
            let dir = tempfile::tempdir().unwrap();
            let spec = SessionSpec::t1_and_dwi("P001", 4, 3, layout);
            let files = write_session(dir.path(), &spec).unwrap();
            assert_eq!(files.len(), 4 + 4 * 4);
            let summary = summarize(dir.path());
            assert_eq!(summary.dicom_files, 20);
            assert_eq!(summary.not_dicom, 0);
            assert_eq!(summary.corrupt, 0, "{:?}", summary.problems);
            let described: Vec<(Option<i64>, &str, &str, u64)> = summary
                .series
                .iter()
                .map(|s| {
                    (
                        s.number,
                        s.description.as_str(),
                        s.protocol.as_str(),
                        s.instances,
                    )
                })
                .collect();
            assert_eq!(
                described,
                vec![
                    (Some(2), "T1_MPRAGE", "t1_mprage_sag", 4),
                    (Some(5), "DWI_dir3", "ep2d_diff_AP", 16),
                ]
            );
            assert_eq!(summary.series[1].image_type[2], "DIFFUSION");
            assert_eq!(summary.series[0].date.as_deref(), Some("20260315"));
            assert_eq!(summary.patient_ids.0, vec![("P001".to_string(), 20)]);
            let folders = &summary.series[1].folders;
            match layout {
                Layout::Flat => assert_eq!(folders, &vec![".".to_string()]),
                Layout::Nested => assert_eq!(folders, &vec!["005_DWI_dir3".to_string()]),
            }
        }
    }
}
