//! Reading vectors from files: `.npy` float32 matrices (one row per vector) and JSON Lines
//! files of `{"id": 5 | "driver_1", "vector": [...]}` objects.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use shoal_proto::v1;

use crate::id::Id;

/// A dense row-major `rows x dim` float32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim)
    }
}

/// Reads a C-order 2-D float32 `.npy` file, keeping at most `limit` rows.
pub fn read_npy(path: &Path, limit: Option<usize>) -> Result<Matrix> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .with_context(|| format!("{} is not a valid .npy file", path.display()))?;
    let shape = npy.shape().to_vec();
    let &[rows, dim] = shape.as_slice() else {
        bail!(
            "{}: expected a 2-D array (vectors x dimension), got shape {shape:?}",
            path.display()
        );
    };
    ensure!(
        dim > 0,
        "{}: vectors have dimension 0 (shape {shape:?})",
        path.display()
    );
    ensure!(
        npy.order() == npyz::Order::C,
        "{}: Fortran-order arrays are not supported; save np.ascontiguousarray(a) instead",
        path.display()
    );
    let dtype = npy.dtype().descr();
    let data = npy.data::<f32>().map_err(|_| {
        anyhow::anyhow!(
            "{}: dtype is {dtype}, expected float32 ('<f4'); convert with a.astype(np.float32)",
            path.display()
        )
    })?;
    let rows = limit.map_or(rows, |limit| rows.min(limit as u64));
    let dim = usize::try_from(dim)?;
    let len = usize::try_from(rows)?
        .checked_mul(dim)
        .context("array too large")?;
    let data = data
        .take(len)
        .collect::<std::io::Result<Vec<f32>>>()
        .with_context(|| format!("{}: truncated or unreadable data", path.display()))?;
    ensure!(
        data.len() == len,
        "{}: file is truncated ({} of {len} values)",
        path.display(),
        data.len()
    );
    Ok(Matrix { dim, data })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPoint {
    id: Id,
    #[serde(default)]
    vector: Vec<f32>,
    #[serde(default)]
    text: String,
}

/// Reads a JSON Lines file of points; blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<v1::Point>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut points = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let point: JsonPoint = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        points.push(v1::Point {
            id: Some(point.id.into()),
            vector: point.vector,
            text: point.text,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use npyz::WriterBuilder;

    use super::*;

    fn write_npy<T: npyz::AutoSerialize + Copy>(shape: &[u64], values: &[T]) -> tempfile::TempPath {
        write_npy_in(npyz::Order::C, shape, values)
    }

    fn write_npy_in<T: npyz::AutoSerialize + Copy>(
        order: npyz::Order,
        shape: &[u64],
        values: &[T],
    ) -> tempfile::TempPath {
        let file = tempfile::Builder::new().suffix(".npy").tempfile().unwrap();
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .order(order)
            .shape(shape)
            .writer(file.as_file())
            .begin_nd()
            .unwrap();
        writer.extend(values.iter().copied()).unwrap();
        writer.finish().unwrap();
        file.into_temp_path()
    }

    #[test]
    fn npy_float32_matrix_is_read_row_major() {
        let path = write_npy(&[3, 2], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let m = read_npy(&path, None).unwrap();
        assert_eq!((m.rows(), m.dim), (3, 2));
        assert_eq!(m.row(1), &[3.0, 4.0]);
        assert_eq!(m.iter().count(), 3);
        let m = read_npy(&path, Some(2)).unwrap();
        assert_eq!(m.data, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn npy_errors_are_explained() {
        let f64s = write_npy(&[1, 2], &[1.0f64, 2.0]);
        let err = format!("{:#}", read_npy(&f64s, None).unwrap_err());
        assert!(err.contains("expected float32"), "{err}");

        let fortran = write_npy_in(npyz::Order::Fortran, &[1, 2], &[1.0f32, 2.0]);
        let err = format!("{:#}", read_npy(&fortran, None).unwrap_err());
        assert!(err.contains("Fortran-order"), "{err}");

        let flat = write_npy(&[2], &[1.0f32, 2.0]);
        let err = format!("{:#}", read_npy(&flat, None).unwrap_err());
        assert!(err.contains("2-D"), "{err}");

        let err = format!(
            "{:#}",
            read_npy(Path::new("/nonexistent.npy"), None).unwrap_err()
        );
        assert!(err.contains("cannot open"), "{err}");

        let mut garbage = tempfile::NamedTempFile::new().unwrap();
        garbage.write_all(b"not numpy").unwrap();
        assert!(read_npy(garbage.path(), None).is_err());
    }

    #[test]
    fn jsonl_points_keep_their_id_kind() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, r#"{{"id": 5, "vector": [1, 2.5]}}"#).unwrap();
        writeln!(file).unwrap();
        writeln!(file, r#"{{"id": "driver_1", "vector": [0.5, 0]}}"#).unwrap();
        let points = read_jsonl(file.path()).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].id, Some(5.into()));
        assert_eq!(points[0].vector, vec![1.0, 2.5]);
        assert_eq!(points[1].id, Some("driver_1".into()));

        writeln!(file, r#"{{"id": -1, "vector": [0.5, 0]}}"#).unwrap();
        let err = format!("{:#}", read_jsonl(file.path()).unwrap_err());
        assert!(err.contains("line 4"), "{err}");
    }
}
