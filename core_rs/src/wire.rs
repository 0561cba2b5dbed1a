//! Protobuf wire encoding of the candidate table, the bulk of a `Recommend` answer.
//!
//! Building 64 row messages from Python cost about as much as the decision itself;
//! the same rows written here as wire bytes and parsed by protobuf's C parser cost a
//! small fraction of it. The bytes are exactly what protobuf's own serializer writes,
//! so a message that parses them is the message the rows describe.

use crate::check;
use crate::error::{CoreError, CoreResult};

/// The largest field number protobuf allows (2^29 - 1).
pub const MAX_FIELD_NUMBER: u32 = (1 << 29) - 1;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

/// Field numbers of a row message: an integer width and three doubles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowFields {
    pub parallelism: u32,
    pub mean: u32,
    pub sd: u32,
    pub score: u32,
}

/// The columns of a candidate table, one entry per row.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub parallelism: &'a [f64],
    pub mean: &'a [f64],
    pub sd: &'a [f64],
    pub score: &'a [f64],
}

/// Appends `rows` to `out` as the repeated message field `field`.
///
/// Fields holding zero are left out as proto3 does; `-0.0` and NaN are written, as
/// protobuf compares the bits. Widths must be whole numbers in `[0, 2^31 - 1]`.
pub fn encode_rows(
    field: u32,
    fields: RowFields,
    rows: Rows<'_>,
    out: &mut Vec<u8>,
) -> CoreResult<()> {
    check_field("field", field)?;
    check_field("row_fields.parallelism", fields.parallelism)?;
    check_field("row_fields.mean", fields.mean)?;
    check_field("row_fields.sd", fields.sd)?;
    check_field("row_fields.score", fields.score)?;
    check::same_len("mean", rows.mean, "s", rows.parallelism)?;
    check::same_len("sd", rows.sd, "s", rows.parallelism)?;
    check::same_len("score", rows.score, "s", rows.parallelism)?;
    let widths = rows
        .parallelism
        .iter()
        .enumerate()
        .map(|(i, &s)| width(i, s))
        .collect::<CoreResult<Vec<_>>>()?;
    out.reserve(rows.parallelism.len() * 32);
    let mut body = Vec::with_capacity(32);
    for (i, &s) in widths.iter().enumerate() {
        body.clear();
        if s != 0 {
            put_varint(&mut body, tag(fields.parallelism, VARINT));
            put_varint(&mut body, u64::from(s));
        }
        put_double(&mut body, fields.mean, rows.mean[i]);
        put_double(&mut body, fields.sd, rows.sd[i]);
        put_double(&mut body, fields.score, rows.score[i]);
        put_varint(out, tag(field, LENGTH_DELIMITED));
        put_varint(out, body.len() as u64);
        out.extend_from_slice(&body);
    }
    Ok(())
}

fn check_field(name: &'static str, number: u32) -> CoreResult<()> {
    if (1..=MAX_FIELD_NUMBER).contains(&number) {
        Ok(())
    } else {
        Err(CoreError::IntOutOfRange {
            name,
            requirement: format!("must be in [1, {MAX_FIELD_NUMBER}]"),
            value: i64::from(number),
        })
    }
}

fn width(index: usize, s: f64) -> CoreResult<u32> {
    if s.fract() == 0.0 && (0.0..=f64::from(i32::MAX)).contains(&s) {
        // Exact: a whole number within i32's range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(s as u32)
    } else {
        Err(CoreError::OutOfRange {
            name: format!("s[{index}]"),
            requirement: "must be a whole number in [0, 2147483647]",
            value: s,
        })
    }
}

fn tag(field: u32, wire_type: u32) -> u64 {
    u64::from(field << 3 | wire_type)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation keeps the low seven bits, which is the point.
        #[allow(clippy::cast_possible_truncation)]
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(value as u8);
}

fn put_double(out: &mut Vec<u8>, field: u32, value: f64) {
    if value.to_bits() != 0 {
        put_varint(out, tag(field, FIXED64));
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: RowFields = RowFields {
        parallelism: 1,
        mean: 2,
        sd: 3,
        score: 4,
    };

    fn encode(
        field: u32,
        s: &[f64],
        mean: &[f64],
        sd: &[f64],
        score: &[f64],
    ) -> CoreResult<Vec<u8>> {
        let mut out = Vec::new();
        let rows = Rows {
            parallelism: s,
            mean,
            sd,
            score,
        };
        encode_rows(field, FIELDS, rows, &mut out)?;
        Ok(out)
    }

    #[test]
    fn writes_one_row_as_protobuf_does() {
        // Candidate{parallelism: 3, mean_seconds: 1.5, sd_seconds: 0, score: -0.0} in
        // field 7, as `SerializeToString` writes it.
        let bytes = encode(7, &[3.0], &[1.5], &[0.0], &[-0.0]).unwrap();
        let mut expected = vec![0x3a, 20, 0x08, 3, 0x11];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.push(0x21);
        expected.extend_from_slice(&(-0.0f64).to_le_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn multi_byte_varints_for_large_widths_and_field_numbers() {
        let bytes = encode(MAX_FIELD_NUMBER, &[300.0], &[0.0], &[0.0], &[0.0]).unwrap();
        // Tag (2^29 - 1) << 3 | 2 takes five bytes, 300 two.
        assert_eq!(
            bytes,
            vec![0xfa, 0xff, 0xff, 0xff, 0x0f, 3, 0x08, 0xac, 0x02]
        );
    }

    #[test]
    fn an_empty_table_is_no_bytes() {
        assert!(encode(7, &[], &[], &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn names_what_is_wrong() {
        let err = encode(7, &[1.0, 2.5], &[1.0; 2], &[1.0; 2], &[1.0; 2]).unwrap_err();
        assert_eq!(err.argument(), "s[1]");
        let err = encode(7, &[-1.0], &[1.0], &[1.0], &[1.0]).unwrap_err();
        assert_eq!(err.argument(), "s[0]");
        let err = encode(7, &[1.0], &[1.0, 2.0], &[1.0], &[1.0]).unwrap_err();
        assert_eq!(err.argument(), "mean");
        let err = encode(0, &[1.0], &[1.0], &[1.0], &[1.0]).unwrap_err();
        assert_eq!(err.argument(), "field");
        let err = encode(MAX_FIELD_NUMBER + 1, &[1.0], &[1.0], &[1.0], &[1.0]).unwrap_err();
        assert_eq!(err.argument(), "field");
    }
}
