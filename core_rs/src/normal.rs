//! The standard Normal quantile (SPEC 5.4 deadlines), after Wichura's algorithm AS 241
//! (PPND16, Applied Statistics 37(3), 1988): rational approximations in three regions,
//! relative accuracy about 1e-16.

// The coefficients are kept digit for digit as published.
#![allow(clippy::excessive_precision)]

use crate::check::{self, Range};
use crate::error::CoreResult;

/// Coefficients of `|q| <= 0.425`, in `r = 0.180625 - q^2`; lowest degree first.
const CENTRAL_NUM: [f64; 8] = [
    3.387_132_872_796_366_608,
    1.331_416_678_917_843_774_5e2,
    1.971_590_950_306_551_442_7e3,
    1.373_169_376_550_946_112_5e4,
    4.592_195_393_154_987_145_7e4,
    6.726_577_092_700_870_085_3e4,
    3.343_057_558_358_812_810_5e4,
    2.509_080_928_730_122_672_7e3,
];
const CENTRAL_DEN: [f64; 8] = [
    1.0,
    4.231_333_070_160_091_125_2e1,
    6.871_870_074_920_579_083e2,
    5.394_196_021_424_751_107_7e3,
    2.121_379_430_158_659_586_7e4,
    3.930_789_580_009_271_061e4,
    2.872_908_573_572_194_267_4e4,
    5.226_495_278_852_854_561e3,
];
/// Tails with `r = sqrt(-ln(min(q, 1 - q))) <= 5`, in `r - 1.6`.
const NEAR_NUM: [f64; 8] = [
    1.423_437_110_749_683_577_34,
    4.630_337_846_156_545_295_9,
    5.769_497_221_460_691_405_5,
    3.647_848_324_763_204_605_04,
    1.270_458_252_452_368_382_58,
    2.417_807_251_774_506_117_7e-1,
    2.272_384_498_926_918_458_33e-2,
    7.745_450_142_783_414_076_4e-4,
];
const NEAR_DEN: [f64; 8] = [
    1.0,
    2.053_191_626_637_758_821_87,
    1.676_384_830_183_803_849_4,
    6.897_673_349_851_000_045_5e-1,
    1.481_039_764_274_800_745_9e-1,
    1.519_866_656_361_645_719_66e-2,
    5.475_938_084_995_344_946e-4,
    1.050_750_071_644_416_843_24e-9,
];
/// Far tails, `r > 5`, in `r - 5`.
const FAR_NUM: [f64; 8] = [
    6.657_904_643_501_103_777_2,
    5.463_784_911_164_114_369_9,
    1.784_826_539_917_291_335_8,
    2.965_605_718_285_048_912_3e-1,
    2.653_218_952_657_612_309_3e-2,
    1.242_660_947_388_078_438_6e-3,
    2.711_555_568_743_487_578_15e-5,
    2.010_334_399_292_288_132_65e-7,
];
const FAR_DEN: [f64; 8] = [
    1.0,
    5.998_322_065_558_879_376_9e-1,
    1.369_298_809_227_358_053_1e-1,
    1.487_536_129_085_061_485_25e-2,
    7.868_691_311_456_132_591e-4,
    1.846_318_317_510_054_681_8e-5,
    1.421_511_758_316_445_888_7e-7,
    2.044_263_103_389_939_785_64e-15,
];

fn ratio(num: &[f64; 8], den: &[f64; 8], x: f64) -> f64 {
    let horner =
        |coefficients: &[f64; 8]| coefficients.iter().rev().fold(0.0, |acc, &c| acc * x + c);
    horner(num) / horner(den)
}

/// `z` with `Phi(z) = q` for the standard Normal CDF `Phi`; `q` in (0, 1).
pub fn normal_quantile(q: f64) -> CoreResult<f64> {
    let q = check::scalar("q", q, Range::UnitOpen)?;
    let centred = q - 0.5;
    if centred.abs() <= 0.425 {
        return Ok(centred * ratio(&CENTRAL_NUM, &CENTRAL_DEN, 0.180_625 - centred * centred));
    }
    let tail = if centred < 0.0 { q } else { 1.0 - q };
    let r = (-tail.ln()).sqrt();
    let magnitude = if r <= 5.0 {
        ratio(&NEAR_NUM, &NEAR_DEN, r - 1.6)
    } else {
        ratio(&FAR_NUM, &FAR_DEN, r - 5.0)
    };
    Ok(if centred < 0.0 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_quantiles() {
        assert_eq!(normal_quantile(0.5).unwrap(), 0.0);
        assert!((normal_quantile(0.975).unwrap() - 1.959_963_984_540_054).abs() < 1e-15);
        assert!((normal_quantile(1e-10).unwrap() + 6.361_340_902_404_056).abs() < 1e-13);
        assert!((normal_quantile(1e-300).unwrap() + 37.047_096_299_361_2).abs() < 1e-10);
        assert_eq!(normal_quantile(1.0).unwrap_err().argument(), "q");
    }
}
