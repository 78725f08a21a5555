//! A backup is an age file: the standard `age` tool (Debian's `age`
//! package; scripts/test.sh installs it) decrypts it with the tenant's key,
//! and what comes out is a plain tar stream with the parts and the
//! manifest, so a tenant holding its own key needs nothing of Bulkhead's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, process::Command};

use bulkhead_backup::{About, Part, generate_key, write};

#[test]
fn the_age_tool_decrypts_a_backup_into_its_parts_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = generate_key();
    let about = About {
        tenant: "acme".into(),
        tenant_id: uuid::Uuid::from_u128(1),
        plan: "starter".into(),
        created_at: "2026-12-04T17:00:00Z".into(),
        schemas: BTreeMap::new(),
    };
    let data: &[u8] = b"rows of acme";
    let part = Part { name: "data.db".into(), size: data.len() as u64, reader: Box::new(data) };
    let archive = dir.path().join("acme.age");
    let manifest =
        write(std::fs::File::create(&archive).unwrap(), &recipient, about, [part]).unwrap();
    let key = dir.path().join("key.txt");
    std::fs::write(&key, format!("{}\n", identity.as_str())).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let decrypted = dir.path().join("acme.tar");
    let age = Command::new("age")
        .arg("--decrypt")
        .arg("--identity")
        .arg(&key)
        .arg("--output")
        .arg(&decrypted)
        .arg(&archive)
        .output()
        .expect("the age tool (Debian: the age package; scripts/test.sh installs it)");
    assert!(age.status.success(), "{}", String::from_utf8_lossy(&age.stderr));
    let tar = Command::new("tar").arg("-xf").arg(&decrypted).arg("-C").arg(&out).output().unwrap();
    assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));

    assert_eq!(std::fs::read_to_string(out.join("FORMAT")).unwrap(), "1\n");
    assert_eq!(std::fs::read(out.join("parts/data.db")).unwrap(), data);
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(listed["tenant"], "acme");
    assert_eq!(listed["parts"][0]["sha256"], manifest.parts[0].sha256);
}
