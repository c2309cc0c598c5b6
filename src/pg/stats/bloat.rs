//! How much of a table or B-tree is empty space, estimated from the row
//! count and average widths in the statistics against the pages it takes,
//! packed as PostgreSQL's on-disk format packs them.

/// Page header and line pointer sizes, and the alignment, of PostgreSQL's
/// on-disk format (the same on every platform it builds on today).
const PAGE_HEADER: f64 = 24.0;
const LINE_POINTER: f64 = 4.0;
const BTREE_SPECIAL: f64 = 16.0;

fn maxalign(n: f64) -> f64 {
    (n / 8.0).ceil() * 8.0
}

/// The share of `actual_pages` a table needs no longer, judged by how many
/// pages `rows` rows of `row_width` bytes take when packed to `fillfactor`.
pub fn heap_bloat(
    rows: f64,
    row_width: f64,
    fillfactor: f64,
    block: f64,
    actual_pages: f64,
) -> Option<f64> {
    if actual_pages <= 0.0 || rows < 0.0 {
        return None;
    }
    // A tuple: 23-byte header, aligned, then the data, aligned, plus its pointer.
    let tuple = maxalign(23.0) + maxalign(row_width) + LINE_POINTER;
    let per_page = ((block - PAGE_HEADER) * fillfactor / 100.0 / tuple)
        .floor()
        .max(1.0);
    let needed = (rows / per_page).ceil();
    Some((1.0 - needed / actual_pages).clamp(0.0, 1.0))
}

/// The same for a B-tree: leaf tuples of the key's width, pages filled to the
/// index's fillfactor, one meta page.
pub fn btree_bloat(
    rows: f64,
    key_width: f64,
    fillfactor: f64,
    block: f64,
    actual_pages: f64,
) -> Option<f64> {
    if actual_pages <= 1.0 || rows < 0.0 {
        return None;
    }
    let tuple = maxalign(8.0 + key_width) + LINE_POINTER;
    let per_page = ((block - PAGE_HEADER - BTREE_SPECIAL) * fillfactor / 100.0 / tuple)
        .floor()
        .max(1.0);
    let needed = (rows / per_page).ceil() + 1.0;
    Some((1.0 - needed / actual_pages).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_table_has_no_bloat_and_a_tenth_full_one_has_ninety_percent() {
        // 100 000 rows of 32 bytes: 24 + 32 + 4 = 60 bytes a tuple, 136 a page.
        let packed = (100_000.0_f64 / 136.0).ceil();
        assert_eq!(
            heap_bloat(100_000.0, 32.0, 100.0, 8192.0, packed),
            Some(0.0)
        );
        let b = heap_bloat(10_000.0, 32.0, 100.0, 8192.0, packed).unwrap();
        assert!((0.89..0.91).contains(&b), "{b}");
        assert_eq!(heap_bloat(10.0, 32.0, 100.0, 8192.0, 0.0), None);
    }

    #[test]
    fn btree_bloat_counts_the_meta_page_and_the_fillfactor() {
        // An int4 key: 8 + 4 -> 16, plus 4: 20 bytes; (8192-40)*0.9/20 = 366 a page.
        let fresh = (100_000.0_f64 / 366.0).ceil() + 1.0;
        let b = btree_bloat(100_000.0, 4.0, 90.0, 8192.0, fresh).unwrap();
        assert!(b < 0.01, "{b}");
        let b = btree_bloat(10_000.0, 4.0, 90.0, 8192.0, fresh).unwrap();
        assert!((0.88..0.91).contains(&b), "{b}");
    }
}
