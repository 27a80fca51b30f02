//! The `grpc-timeout` codec (gRPC over HTTP/2), and the millisecond headers
//! some peers send instead (`Connect-Timeout-Ms`, or a mesh's own).
//!
//! The wire form is 1 to 8 ASCII digits followed by one unit: `H` (hours),
//! `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or
//! `n` (nanoseconds).
//!
//! - [`parse`] is strict: exactly that and nothing else (no sign, no spaces,
//!   no 9th digit, no other unit). It never panics; a bad value gives a typed
//!   [`ParseError`].
//! - [`encode`] picks the most precise unit whose value fits in 8 digits and
//!   **truncates**, so the peer is never told it has more time than is left
//!   (grpc-go rounds up instead). 30 s is `30000000u`; anything from
//!   `99999999H` up saturates at `99999999H`. A zero remainder encodes as
//!   `1n`, the smallest *positive* timeout: `0n` would be read by some peers
//!   as "no timeout", while `1n` is a deadline that has already passed, which
//!   is what the caller has.
//!
//! For every `d` of at least 1 ns below the saturation point,
//! `parse(encode(d)) <= d` and the difference is less than one unit of the
//! chosen encoding.
//!
//! No feature is needed for this module; it allocates nothing.
//!
//! ```
//! use ctxcore_http::grpc_timeout::{encode, parse, ParseError};
//! use std::time::Duration;
//!
//! assert_eq!(encode(Duration::from_millis(200)).as_str(), "200000u");
//! assert_eq!(encode(Duration::from_secs(30)).as_str(), "30000000u");
//! assert_eq!(encode(Duration::ZERO).as_str(), "1n");
//!
//! assert_eq!(parse("200m"), Ok(Duration::from_millis(200)));
//! assert_eq!(parse("3H"), Ok(Duration::from_secs(3 * 3600)));
//! assert_eq!(parse("+5S"), Err(ParseError::InvalidDigit));
//! assert_eq!(parse("123456789S"), Err(ParseError::TooManyDigits));
//! ```

use core::fmt;
use core::time::Duration;

/// The name of the gRPC timeout header, `grpc-timeout`.
///
/// ```
/// assert_eq!(ctxcore_http::grpc_timeout::GRPC_TIMEOUT, "grpc-timeout");
/// ```
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The name of the Connect protocol's timeout header, `connect-timeout-ms`
/// (a whole number of milliseconds, see [`parse_millis`]).
///
/// ```
/// assert_eq!(ctxcore_http::grpc_timeout::CONNECT_TIMEOUT_MS, "connect-timeout-ms");
/// ```
pub const CONNECT_TIMEOUT_MS: &str = "connect-timeout-ms";

/// The most digits a `grpc-timeout` value may have.
///
/// ```
/// assert_eq!(ctxcore_http::grpc_timeout::MAX_DIGITS, 8);
/// ```
pub const MAX_DIGITS: usize = 8;

/// The most digits [`parse_millis`] accepts (the Connect protocol's limit).
///
/// ```
/// assert_eq!(ctxcore_http::grpc_timeout::MAX_MILLIS_DIGITS, 10);
/// ```
pub const MAX_MILLIS_DIGITS: usize = 10;

/// The longest timeout the header can carry, `99999999H`: what [`encode`]
/// saturates at.
///
/// ```
/// use ctxcore_http::grpc_timeout::{encode, MAX};
/// assert_eq!(encode(MAX).as_str(), "99999999H");
/// assert_eq!(encode(std::time::Duration::MAX).as_str(), "99999999H");
/// ```
pub const MAX: Duration = Duration::from_secs(99_999_999 * 3600);

const MAX_VALUE: u64 = 99_999_999;

/// Why a timeout header was rejected.
///
/// Its `Display` says what was wrong, never echoing the value (which came
/// from the peer).
///
/// ```
/// use ctxcore_http::grpc_timeout::{parse, ParseError};
/// let err = parse("5x").unwrap_err();
/// assert_eq!(err, ParseError::InvalidUnit);
/// assert_eq!(
///     err.to_string(),
///     "invalid grpc-timeout: the unit is not one of H, M, S, m, u, n"
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseError {
    /// The value is empty.
    Empty,
    /// The value ends with a digit: there is no unit.
    MissingUnit,
    /// The last character is not one of `H M S m u n`.
    InvalidUnit,
    /// There is a unit but no digit before it.
    NoDigits,
    /// More digits than allowed (8 for `grpc-timeout`, 10 for milliseconds).
    TooManyDigits,
    /// Something other than an ASCII digit where digits must be (a sign, a
    /// space, a dot, any other character).
    InvalidDigit,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::Empty => "invalid grpc-timeout: the value is empty",
            ParseError::MissingUnit => {
                "invalid grpc-timeout: no unit after the digits (expected one of H, M, S, m, u, n)"
            }
            ParseError::InvalidUnit => "invalid grpc-timeout: the unit is not one of H, M, S, m, u, n",
            ParseError::NoDigits => "invalid grpc-timeout: no digits before the unit",
            ParseError::TooManyDigits => "invalid grpc-timeout: too many digits",
            ParseError::InvalidDigit => "invalid grpc-timeout: the value is not made of ASCII digits only",
        })
    }
}

impl std::error::Error for ParseError {}

/// Nanoseconds per unit, for a unit byte.
const fn unit_nanos(unit: u8) -> Option<u64> {
    Some(match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    })
}

/// Parses 1..=max ASCII digits (no sign, nothing else).
fn digits(bytes: &[u8], max: usize) -> Result<u64, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::NoDigits);
    }
    if bytes.len() > max {
        return Err(ParseError::TooManyDigits);
    }
    let mut value: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return Err(ParseError::InvalidDigit);
        }
        // At most 10 digits: cannot overflow a u64.
        value = value * 10 + u64::from(b - b'0');
    }
    Ok(value)
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit.
///
/// Strict and panic-free; see the [module docs](self).
///
/// ```
/// use ctxcore_http::grpc_timeout::{parse, ParseError};
/// use std::time::Duration;
///
/// assert_eq!(parse("1M"), Ok(Duration::from_secs(60)));
/// assert_eq!(parse("82n"), Ok(Duration::from_nanos(82)));
/// assert_eq!(parse(""), Err(ParseError::Empty));
/// assert_eq!(parse("5§"), Err(ParseError::InvalidUnit));
/// ```
pub fn parse(value: &str) -> Result<Duration, ParseError> {
    parse_bytes(value.as_bytes())
}

/// [`parse`] for raw bytes, such as `HeaderValue::as_bytes()` (header values
/// need not be UTF-8).
///
/// ```
/// use ctxcore_http::grpc_timeout::parse_bytes;
/// use std::time::Duration;
/// assert_eq!(parse_bytes(b"13m"), Ok(Duration::from_millis(13)));
/// assert!(parse_bytes(b"\xff1S").is_err());
/// ```
pub fn parse_bytes(value: &[u8]) -> Result<Duration, ParseError> {
    let Some((&unit, number)) = value.split_last() else {
        return Err(ParseError::Empty);
    };
    let Some(per_unit) = unit_nanos(unit) else {
        return Err(if unit.is_ascii_digit() {
            ParseError::MissingUnit
        } else {
            ParseError::InvalidUnit
        });
    };
    let n = digits(number, MAX_DIGITS)?;
    // n < 10^8 and per_unit <= 3.6e12: the product fits in a u128, and the
    // largest (99999999H) in a Duration.
    let nanos = u128::from(n) * u128::from(per_unit);
    let secs = (nanos / 1_000_000_000) as u64;
    let sub = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Parses a whole number of milliseconds, as `Connect-Timeout-Ms` and some
/// meshes' headers carry it: 1 to 10 ASCII digits and nothing else.
///
/// ```
/// use ctxcore_http::grpc_timeout::{parse_millis, ParseError};
/// use std::time::Duration;
///
/// assert_eq!(parse_millis(b"1500"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_millis(b""), Err(ParseError::Empty));
/// assert_eq!(parse_millis(b"-1"), Err(ParseError::InvalidDigit));
/// assert_eq!(parse_millis(b"12345678901"), Err(ParseError::TooManyDigits));
/// ```
pub fn parse_millis(value: &[u8]) -> Result<Duration, ParseError> {
    if value.is_empty() {
        return Err(ParseError::Empty);
    }
    digits(value, MAX_MILLIS_DIGITS).map(Duration::from_millis)
}

/// An encoded `grpc-timeout` value: at most 9 ASCII bytes, kept inline (no
/// allocation). See [`encode`].
///
/// ```
/// use ctxcore_http::grpc_timeout::encode;
/// use std::time::Duration;
///
/// let e = encode(Duration::from_secs(3600 * 200));
/// assert_eq!(e.as_str(), "720000S");
/// assert_eq!(e.to_string(), "720000S");
/// assert_eq!(e.duration(), Duration::from_secs(3600 * 200));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encoded {
    buf: [u8; MAX_DIGITS + 1],
    len: u8,
}

impl Encoded {
    /// The value as text, e.g. `"200m"`.
    ///
    /// ```
    /// let e = ctxcore_http::grpc_timeout::encode(std::time::Duration::from_nanos(82));
    /// assert_eq!(e.as_str(), "82n");
    /// ```
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and an ASCII unit are ever written.
        core::str::from_utf8(self.as_bytes()).unwrap_or("1n")
    }

    /// The value as bytes.
    ///
    /// ```
    /// let e = ctxcore_http::grpc_timeout::encode(std::time::Duration::from_micros(2));
    /// assert_eq!(e.as_bytes(), b"2000n");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The duration the value stands for (what the peer will parse): at most
    /// the duration encoded, less than one unit below it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let e = ctxcore_http::grpc_timeout::encode(Duration::new(100, 123_456_789));
    /// assert_eq!(e.as_str(), "100123m");
    /// assert_eq!(e.duration(), Duration::from_millis(100_123));
    /// ```
    pub fn duration(&self) -> Duration {
        parse_bytes(self.as_bytes()).unwrap_or(Duration::from_nanos(1))
    }

    /// As an `http::HeaderValue`, ready to insert under [`GRPC_TIMEOUT`].
    ///
    /// ```
    /// # #[cfg(feature = "server")] {
    /// use ctxcore_http::grpc_timeout::encode;
    /// let v = encode(std::time::Duration::from_millis(200)).to_header_value();
    /// assert_eq!(v, "200000u");
    /// # }
    /// ```
    #[cfg(any(feature = "server", feature = "client"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "server", feature = "client"))))]
    pub fn to_header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_str(self.as_str()).unwrap_or(http::HeaderValue::from_static("1n"))
    }
}

impl fmt::Display for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({:?})", self.as_str())
    }
}

/// Encodes a remaining time as a `grpc-timeout` value: the most precise unit
/// whose value fits in 8 digits, truncated (never more time than `d`);
/// saturates at `99999999H`; zero gives `1n`. See the [module docs](self).
///
/// ```
/// use ctxcore_http::grpc_timeout::encode;
/// use std::time::Duration;
///
/// assert_eq!(encode(Duration::from_nanos(99_999_999)).as_str(), "99999999n");
/// assert_eq!(encode(Duration::from_nanos(100_000_001)).as_str(), "100000u");
/// assert_eq!(encode(Duration::from_secs(30)).as_str(), "30000000u");
/// assert_eq!(encode(Duration::ZERO).as_str(), "1n");
/// ```
pub fn encode(d: Duration) -> Encoded {
    const UNITS: [(u8, u128); 6] = [
        (b'n', 1),
        (b'u', 1_000),
        (b'm', 1_000_000),
        (b'S', 1_000_000_000),
        (b'M', 60_000_000_000),
        (b'H', 3_600_000_000_000),
    ];
    let nanos = d.as_nanos();
    let (value, unit) = if nanos == 0 {
        (1, b'n')
    } else {
        UNITS
            .iter()
            .find_map(|&(unit, per)| {
                let v = nanos / per;
                (v <= u128::from(MAX_VALUE)).then_some((v as u64, unit))
            })
            .unwrap_or((MAX_VALUE, b'H'))
    };
    let mut digits = [0u8; MAX_DIGITS];
    let mut n = value;
    let mut i = MAX_DIGITS;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = MAX_DIGITS - i;
    let mut buf = [0u8; MAX_DIGITS + 1];
    buf[..len].copy_from_slice(&digits[i..]);
    buf[len] = unit;
    Encoded {
        buf,
        len: (len + 1) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // tonic's table (tonic/src/transport/service/grpc_timeout.rs).
    #[test]
    fn tonic_table() {
        assert_eq!(parse("3H"), Ok(Duration::from_secs(3 * 60 * 60)));
        assert_eq!(parse("1M"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("42S"), Ok(Duration::from_secs(42)));
        assert_eq!(parse("13m"), Ok(Duration::from_millis(13)));
        assert_eq!(parse("2u"), Ok(Duration::from_micros(2)));
        assert_eq!(parse("82n"), Ok(Duration::from_nanos(82)));
        assert_eq!(parse("82f"), Err(ParseError::InvalidUnit));
        assert_eq!(parse("123456789H"), Err(ParseError::TooManyDigits));
        assert_eq!(parse("oneH"), Err(ParseError::InvalidDigit));
        // tonic's encoder table (tonic/src/request.rs).
        assert_eq!(encode(Duration::from_secs(30)).as_str(), "30000000u");
    }

    #[test]
    fn strict_rejections() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("+5S"), Err(ParseError::InvalidDigit));
        assert_eq!(parse("-5S"), Err(ParseError::InvalidDigit));
        assert_eq!(parse(" 5S"), Err(ParseError::InvalidDigit));
        assert_eq!(parse("5 S"), Err(ParseError::InvalidDigit));
        assert_eq!(parse("5.0S"), Err(ParseError::InvalidDigit));
        assert_eq!(parse("5§"), Err(ParseError::InvalidUnit));
        assert_eq!(parse("§S"), Err(ParseError::InvalidDigit));
        assert_eq!(parse("5x"), Err(ParseError::InvalidUnit));
        assert_eq!(parse("5s"), Err(ParseError::InvalidUnit));
        assert_eq!(parse("5"), Err(ParseError::MissingUnit));
        assert_eq!(parse("S"), Err(ParseError::NoDigits));
        assert_eq!(parse("5SS"), Err(ParseError::InvalidDigit));
        assert_eq!(parse("123456789S"), Err(ParseError::TooManyDigits));
        assert_eq!(parse_bytes(b"1\xffS"), Err(ParseError::InvalidDigit));
        // Every error has a clear message naming the header.
        for e in [
            ParseError::Empty,
            ParseError::MissingUnit,
            ParseError::InvalidUnit,
            ParseError::NoDigits,
            ParseError::TooManyDigits,
            ParseError::InvalidDigit,
        ] {
            assert!(e.to_string().starts_with("invalid grpc-timeout: "), "{e}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse("99999999H"), Ok(MAX));
        assert_eq!(parse("00000000n"), Ok(Duration::ZERO));
        assert_eq!(parse("0n"), Ok(Duration::ZERO));
        assert_eq!(parse("12345678S"), Ok(Duration::from_secs(12_345_678)));
        assert_eq!(encode(MAX).as_str(), "99999999H");
        assert_eq!(encode(MAX + Duration::from_secs(7200)).as_str(), "99999999H");
        assert_eq!(encode(Duration::MAX).as_str(), "99999999H");
        assert_eq!(encode(Duration::ZERO).as_str(), "1n");
        assert_eq!(encode(Duration::from_nanos(1)).as_str(), "1n");
        assert_eq!(encode(Duration::from_nanos(100_000_000)).as_str(), "100000u");
        // Truncates: 1.9999999 s is 1999999u, never 2000000u.
        assert_eq!(encode(Duration::new(1, 999_999_999)).as_str(), "1999999u");
        assert_eq!(encode(Duration::from_secs(100_000_000)).as_str(), "1666666M");
        assert_eq!(encode(Duration::from_secs(100_000_000 * 60)).as_str(), "1666666H");
    }

    #[test]
    fn millis() {
        assert_eq!(parse_millis(b"0"), Ok(Duration::ZERO));
        assert_eq!(parse_millis(b"9999999999"), Ok(Duration::from_millis(9_999_999_999)));
        assert_eq!(parse_millis(b"10m"), Err(ParseError::InvalidDigit));
        assert_eq!(parse_millis(b"+10"), Err(ParseError::InvalidDigit));
    }

    /// A small deterministic generator (no extra dependency).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn unit_of(e: &Encoded) -> Duration {
        let unit = *e.as_bytes().last().unwrap();
        Duration::from_nanos(unit_nanos(unit).unwrap())
    }

    #[test]
    fn round_trip_property() {
        let mut s = 0x9E37_79B9_7F4A_7C15;
        let check = |d: Duration| {
            let e = encode(d);
            let back = parse(e.as_str()).unwrap();
            assert_eq!(back, e.duration());
            assert!(e.as_bytes().len() <= MAX_DIGITS + 1);
            if d.is_zero() {
                assert_eq!(back, Duration::from_nanos(1));
            } else if d >= MAX {
                assert_eq!(back, MAX);
            } else {
                assert!(back <= d, "{d:?} -> {e} -> {back:?}");
                assert!(d - back < unit_of(&e), "{d:?} -> {e} -> {back:?}");
            }
        };
        for shift in 0..64 {
            for _ in 0..200 {
                let r = xorshift(&mut s);
                check(Duration::from_nanos(r >> shift));
                check(Duration::new(r >> shift, (r % 1_000_000_000) as u32));
            }
        }
        for d in [1, 999, 1_000, 99_999_999, 100_000_000, 100_000_001] {
            check(Duration::from_nanos(d));
        }
    }

    #[test]
    fn parse_never_panics() {
        let mut s = 0x0123_4567_89AB_CDEF;
        let alphabet = b"0123456789HMSmun+- x\xff";
        for _ in 0..20_000 {
            let len = (xorshift(&mut s) % 12) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(xorshift(&mut s) % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(d) = parse_bytes(&bytes) {
                assert!(d <= MAX);
                assert!(bytes.len() >= 2 && bytes.len() <= 9);
            }
            let _ = parse_millis(&bytes);
        }
    }
}
