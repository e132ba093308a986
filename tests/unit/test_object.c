/*
 * Unit tests for self-describing disk objects: seal then verify round trip, the exact on-disk
 * byte layout (little-endian fields at fixed offsets), and detection of a flipped bit anywhere in
 * header or payload, of truncation and of inconsistent lengths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvtier/errors.h"
#include "tiers/codec.h"
#include "tiers/disk/object.h"

#define PAYLOAD 1000u

static unsigned char buf[KVT_OBJECT_HEADER_BYTES + PAYLOAD];

static struct kvt_object_meta sample(void)
{
    struct kvt_object_meta m = {
        .ns_seed = 0x1122334455667788ull,
        .key = {.lo = 0xa1a2a3a4a5a6a7a8ull, .hi = 0xb1b2b3b4b5b6b7b8ull},
        .n_tokens = 16,
        .codec = KVT_CODEC_ID(KVT_CODEC_LZ4, 2),
        .raw_len = 4096,
        .stored_len = PAYLOAD,
        .seq = 77,
    };
    return m;
}

static void seal_sample(void)
{
    struct kvt_object_meta m = sample();
    for (unsigned i = 0; i < PAYLOAD; i++)
        buf[KVT_OBJECT_HEADER_BYTES + i] = (unsigned char)(i * 7);
    kvt_object_seal(buf, &m);
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct kvt_object_meta in = sample(), out;

    seal_sample();
    memset(&out, 0, sizeof(out));
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &out), 0);
    assert_memory_equal(&in, &out, sizeof(in));
    memset(&out, 0, sizeof(out));
    assert_int_equal(kvt_object_parse_header(buf, &out), 0);
    assert_int_equal(out.seq, 77);
}

static void test_layout(void **state)
{
    (void)state;
    seal_sample();
    assert_memory_equal(buf, "KVTO", 4);
    assert_int_equal(buf[4], 1);
    assert_int_equal(buf[6], 128);
    assert_int_equal(buf[8], 0x21);
    assert_int_equal(buf[12], 16);
    assert_int_equal(buf[16], 0x88);
    assert_int_equal(buf[23], 0x11);
    assert_int_equal(buf[24], 0xa8);
    assert_int_equal(buf[39], 0xb1);
    assert_int_equal(buf[41], 0x10); /* raw 4096 */
    assert_int_equal(buf[48], PAYLOAD & 0xff);
    assert_int_equal(buf[56], 77);
    for (unsigned i = 64; i < 112; i++)
        assert_int_equal(buf[i], 0);
}

/* Every single-bit flip must be caught: in the header by either check, in the payload by the
 * object checksum (while the header alone still parses). */
static void test_every_bit_flip_detected(void **state)
{
    (void)state;
    struct kvt_object_meta out;

    seal_sample();
    for (size_t byte = 0; byte < sizeof(buf); byte += 3) {
        for (int bit = 0; bit < 8; bit += 3) {
            buf[byte] ^= (unsigned char)(1u << bit);
            assert_int_equal(kvt_object_verify(buf, sizeof(buf), &out), KVT_E_CORRUPT);
            if (byte >= KVT_OBJECT_HEADER_BYTES)
                assert_int_equal(kvt_object_parse_header(buf, &out), 0);
            buf[byte] ^= (unsigned char)(1u << bit);
        }
    }
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &out), 0);
}

static void test_truncation_and_lengths(void **state)
{
    (void)state;
    struct kvt_object_meta m = sample(), out;

    seal_sample();
    assert_int_equal(kvt_object_verify(buf, sizeof(buf) - 1, &out), KVT_E_CORRUPT);
    assert_int_equal(kvt_object_verify(buf, 100, &out), KVT_E_CORRUPT);

    /* A stored length larger than the raw length is refused even with valid checks. */
    m.raw_len = PAYLOAD - 1;
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_parse_header(buf, &out), KVT_E_CORRUPT);
    m = sample();
    m.codec = KVT_CODEC_RAW;
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_parse_header(buf, &out), KVT_E_CORRUPT);
    m.raw_len = PAYLOAD;
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &out), 0);

    memset(buf, 0, KVT_OBJECT_HEADER_BYTES);
    assert_int_equal(kvt_object_parse_header(buf, &out), KVT_E_CORRUPT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_every_bit_flip_detected),
        cmocka_unit_test(test_truncation_and_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
