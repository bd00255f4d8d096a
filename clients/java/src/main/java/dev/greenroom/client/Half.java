package dev.greenroom.client;

/**
 * IEEE 754 half precision (FP16), which Java 17 has no type for: an FP16 tensor keeps each value's
 * 16 bits in a {@code short}.
 */
public final class Half {
  private Half() {}

  /** The float value of half-precision bits. */
  public static float toFloat(short half) {
    int h = Short.toUnsignedInt(half);
    int sign = (h & 0x8000) << 16;
    int exp = (h >>> 10) & 0x1f;
    int frac = h & 0x3ff;
    if (exp == 0x1f) { // Inf, NaN
      return Float.intBitsToFloat(sign | 0x7f800000 | frac << 13);
    }
    if (exp == 0) { // zero, or subnormal: frac x 2^-24
      float v = frac / (float) (1 << 24);
      return sign != 0 ? -v : v;
    }
    return Float.intBitsToFloat(sign | (exp + 112) << 23 | frac << 13);
  }

  /** The half-precision bits nearest to {@code value} (ties to even). */
  public static short fromFloat(float value) {
    int bits = Float.floatToRawIntBits(value);
    int sign = (bits >>> 16) & 0x8000;
    int exp = (bits >>> 23) & 0xff;
    int frac = bits & 0x7fffff;
    if (exp == 0xff) { // Inf, NaN (kept quiet)
      return (short) (sign | (frac != 0 ? 0x7e00 : 0x7c00));
    }
    int e = exp - 127 + 15;
    if (e >= 0x1f) {
      return (short) (sign | 0x7c00);
    }
    if (e <= 0) {
      if (e < -10) {
        return (short) sign;
      }
      // Subnormal half: shift the full mantissa (with its implicit 1) into place.
      int m = frac | 0x800000;
      int shift = 14 - e;
      int half = m >>> shift;
      int rest = m & ((1 << shift) - 1);
      int mid = 1 << (shift - 1);
      if (rest > mid || (rest == mid && (half & 1) == 1)) {
        half++;
      }
      return (short) (sign | half);
    }
    int half = e << 10 | frac >>> 13;
    int rest = frac & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1) == 1)) {
      half++; // may carry into the exponent, up to Inf: that is the right rounding
    }
    return (short) (sign | half);
  }
}
