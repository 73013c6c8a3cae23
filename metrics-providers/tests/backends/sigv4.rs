//! An independent AWS Signature Version 4 checker for the fake CloudWatch:
//! it rebuilds the canonical request from what arrived on the wire and
//! recomputes the signature with `hmac`/`sha2`, sharing no code with the
//! `aws-sigv4` crate that signed it. [`self_test`] first proves it against
//! the `get-vanilla` case of the AWS signing test suite (shipped in the
//! `aws-sigv4` crate's sources, `aws-signing-test-suite/v4/get-vanilla`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::harness::Recorded;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The signature of a canonical request.
fn signature(canonical_request: &str, secret_key: &str, amz_date: &str, region: &str, service: &str) -> String {
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())));
    let key = hmac(format!("AWS4{secret_key}").as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, service);
    let key = hmac(&key, "aws4_request");
    hex::encode(hmac(&key, &string_to_sign))
}

/// Checks `request`'s `Authorization` header: credential scope, the headers
/// that must be signed, and the signature itself.
pub fn verify(request: &Recorded, secret_key: &str, region: &str, service: &str) -> Result<(), String> {
    let authorization = request.header("authorization").ok_or("no Authorization header")?;
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not AWS4-HMAC-SHA256")?;
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .ok_or(format!("no {name} in Authorization"))
    };
    let (credential, signed_headers, claimed) = (field("Credential")?, field("SignedHeaders")?, field("Signature")?);
    let amz_date = request.header("x-amz-date").ok_or("no X-Amz-Date")?;
    let scope = format!("{}/{region}/{service}/aws4_request", &amz_date[..8]);
    if !credential.ends_with(&format!("/{scope}")) {
        return Err(format!("credential scope {credential} is not .../{scope}"));
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    for required in ["content-type", "host", "x-amz-date", "x-amz-target"] {
        if !signed.contains(&required) {
            return Err(format!("{required} is not signed ({signed_headers})"));
        }
    }
    if request.header("x-amz-security-token").is_some() && !signed.contains(&"x-amz-security-token") {
        return Err("the session token is not signed".into());
    }
    let mut canonical_headers = String::new();
    for name in &signed {
        let value = request.header(name).ok_or(format!("signed header {name} is missing"))?;
        canonical_headers.push_str(&format!("{name}:{}\n", value.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    let mut query: Vec<&str> = request.raw_query.split('&').filter(|p| !p.is_empty()).collect();
    query.sort_unstable();
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        query.join("&"),
        hex::encode(Sha256::digest(&request.body))
    );
    let expected = signature(&canonical_request, secret_key, amz_date, region, service);
    if expected == claimed { Ok(()) } else { Err(format!("signature {claimed} is not {expected}")) }
}

/// The `get-vanilla` case: the checker computes AWS's published signature.
pub fn self_test() {
    let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(
        signature(canonical, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z", "us-east-1", "service"),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}
