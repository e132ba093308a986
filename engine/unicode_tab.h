/*
 * Unicode category tables used by the tokenizer's pre-tokenizer (generated into unicode_tab.c by
 * engine/gen-unicode.py).
 */
#ifndef KVT_ENGINE_UNICODE_TAB_H
#define KVT_ENGINE_UNICODE_TAB_H

#include <stddef.h>
#include <stdint.h>

struct kvt_eng_cpt_range {
    uint32_t first;
    uint32_t last;
};

extern const struct kvt_eng_cpt_range kvt_eng_letter_ranges[];
extern const size_t kvt_eng_letter_ranges_count;
extern const struct kvt_eng_cpt_range kvt_eng_number_ranges[];
extern const size_t kvt_eng_number_ranges_count;

#endif
