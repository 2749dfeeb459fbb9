/* BLAKE2b (RFC 7693), unkeyed, for digests of 1..64 bytes.
 *
 * The hash ring places a Call-ID by the first 8 bytes of its BLAKE2b digest
 * (cluster/sharding/ring.py, hashlib.blake2b(key, digest_size=8)), and the
 * edge samples traces by bytes 8..16 of a 16-byte digest
 * (nodes/edge/forwarder.py). hashlib's digests are the reference: the
 * tests compare every digest computed here with hashlib's.
 *
 * Header-only (static functions) so that each extension module stays one
 * .c file (setup.py builds cluster.speedups._<stem> from <stem>.c).
 */
#ifndef SIPCLUSTER_BLAKE2B_H
#define SIPCLUSTER_BLAKE2B_H

#include <stdint.h>
#include <string.h>

static const uint64_t blake2b_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* RFC 7693 §2.7: the message word schedule; round r uses row r mod 10. */
static const uint8_t blake2b_sigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t blake2b_rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t blake2b_load64(const uint8_t *p)
{
    /* Little-endian words (RFC 7693 §2.4), whatever the host's order. */
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* RFC 7693 §3.2, function F: compress one 128-byte block. */
static void blake2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++)
        m[i] = blake2b_load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= t; /* the byte counter's high word stays 0: messages are < 2**64 bytes */
    if (last)
        v[14] = ~v[14];
#define B2B_G(a, b, c, d, x, y)                                                                    \
    do {                                                                                           \
        v[a] = v[a] + v[b] + (x);                                                                  \
        v[d] = blake2b_rotr(v[d] ^ v[a], 32);                                                      \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = blake2b_rotr(v[b] ^ v[c], 24);                                                      \
        v[a] = v[a] + v[b] + (y);                                                                  \
        v[d] = blake2b_rotr(v[d] ^ v[a], 16);                                                      \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = blake2b_rotr(v[b] ^ v[c], 63);                                                      \
    } while (0)
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = blake2b_sigma[r % 10];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
#undef B2B_G
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* The unkeyed digest of data[0:len] in out[0:outlen], 1 <= outlen <= 64. */
static void blake2b_digest(uint8_t *out, size_t outlen, const uint8_t *data, size_t len)
{
    uint64_t h[8];
    uint8_t block[128];
    uint64_t t = 0;
    for (int i = 0; i < 8; i++)
        h[i] = blake2b_iv[i];
    /* RFC 7693 §3.3: parameter block word 0 = 0x0101kknn (no key, nn = outlen). */
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    /* Every full block but the last is compressed as it comes; the last one
     * (full or partial, or empty for an empty message) carries the flag. */
    while (len > 128) {
        t += 128;
        blake2b_compress(h, data, t, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    if (len)
        memcpy(block, data, len);
    t += len;
    blake2b_compress(h, block, t, 1);
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

/* The first eight digest bytes of an 8- or 16-byte digest, read big-endian
 * as int.from_bytes(..., "big") does; ``skip`` selects bytes skip..skip+8. */
static inline uint64_t blake2b_be64(const uint8_t *digest, size_t skip)
{
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++)
        v = (v << 8) | digest[skip + i];
    return v;
}

#endif
