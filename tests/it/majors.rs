//! Every PostgreSQL major the tests support (13 to 18, `common::MAJORS`)
//! starts as a cluster of the harness and answers its SQL: the ground the
//! version matrix of issue 26 stands on. A major that is not installed fails
//! its test (`scripts/test` installs them all).

use crate::common::{Cluster, MAJORS};

/// One test per major, so a failure names the major.
macro_rules! a_cluster_starts_and_answers {
    ($($name:ident: $major:literal,)*) => {
        $(
            #[test]
            fn $name() {
                a_cluster_of_starts_and_answers($major);
            }
        )*

        #[test]
        fn every_major_has_its_test() {
            assert_eq!([$($major),*], MAJORS);
        }
    };
}

a_cluster_starts_and_answers! {
    a_cluster_of_postgresql_13_starts_and_answers: 13,
    a_cluster_of_postgresql_14_starts_and_answers: 14,
    a_cluster_of_postgresql_15_starts_and_answers: 15,
    a_cluster_of_postgresql_16_starts_and_answers: 16,
    a_cluster_of_postgresql_17_starts_and_answers: 17,
    a_cluster_of_postgresql_18_starts_and_answers: 18,
}

fn a_cluster_of_starts_and_answers(major: u32) {
    let cluster = Cluster::start_major(major, "");
    let version = cluster.psql("postgres", "SHOW server_version_num");
    assert!(
        version.starts_with(&major.to_string()) && version.len() == 6,
        "PostgreSQL {major} ({}) says server_version_num = {version:?}",
        cluster.bindir().display()
    );
    // A second database and a table in it: the cluster works beyond connecting.
    cluster.create_db("app");
    assert_eq!(
        cluster.psql("app", "CREATE TABLE t AS SELECT 42 AS n; SELECT n FROM t"),
        "42"
    );
    // Two copies of one template are two clusters to `backup`: for the
    // majors without pg_resetwal, the harness sets the identifier in the
    // copied WAL too, which the server checks at its first start.
    let other = Cluster::start_major(major, "");
    let identifier = |c: &Cluster| {
        c.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
    };
    assert_ne!(identifier(&cluster), identifier(&other));
    // And past a checkpoint and a switch to a new segment, which the
    // server writes the identifier into itself.
    other.psql("postgres", "CHECKPOINT; SELECT pg_switch_wal()");
    other.psql("postgres", "CHECKPOINT");
}
