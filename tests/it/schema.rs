//! `schema.graphql` is a contract: it must equal what the server exports.

#[test]
fn checked_in_schema_is_current() {
    let out = std::process::Command::new(crate::harness::BIN)
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let exported = String::from_utf8(out.stdout).unwrap();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert!(
        exported == checked_in,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql`"
    );
    for needle in [
        "viewer: User",
        "project(id: ID!): Project",
        "createProject(input: CreateProjectInput!): Project!",
        "updateProject(input: UpdateProjectInput!): Project!",
        "deleteProject(input: DeleteProjectInput!): ID!",
        "enum AssetType",
    ] {
        assert!(exported.contains(needle), "the contract names {needle}");
    }
}
