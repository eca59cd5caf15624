//! The cluster certificate authority and the certificates it issues to nodes and clients
//! (rcgen, ECDSA P-256 keys). `plait cluster init` creates the CA; joining peers get a
//! certificate from [`issue`].

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{NetError, SERVER_NAME};

/// Validity of the cluster CA, in days (about 20 years: it must outlive what it issues).
const CA_VALIDITY_DAYS: i64 = 20 * 365;

/// Validity of an issued certificate, in days (about 10 years).
const CERT_VALIDITY_DAYS: i64 = 10 * 365;

/// How far back `not_before` is set, in days, to tolerate clock skew between peers.
const BACKDATE_DAYS: i64 = 1;

fn tls_err(context: &str) -> impl Fn(rcgen::Error) -> NetError + '_ {
    move |e| NetError::Tls(format!("{context}: {e}"))
}

/// A new self-signed cluster CA for `cluster_name`: `(cert_pem, key_pem)`.
/// The CA may sign end-entity certificates only (path length 0).
pub fn new_ca(cluster_name: &str) -> Result<(String, String), NetError> {
    let key = KeyPair::generate().map_err(tls_err("generating CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Plait");
    dn.push(
        DnType::CommonName,
        format!("Plait cluster CA {cluster_name}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS)?;
    let cert = params
        .self_signed(&key)
        .map_err(tls_err("self-signing CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A certificate signed by the CA for the node or client named `common_name`:
/// `(cert_pem, key_pem)`. Its SANs are [`SERVER_NAME`] and `common_name` (a DNS name or an IP
/// address), it is usable for both server and client authentication, valid about 10 years.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
) -> Result<(String, String), NetError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err("CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(tls_err("CA certificate"))?;
    let params = leaf_params(common_name)?;
    let key = KeyPair::generate().map_err(tls_err("generating key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_err("signing certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Parameters of an end-entity certificate for `common_name`: SANs [`SERVER_NAME`] and
/// `common_name`, server and client authentication, valid about 10 years.
fn leaf_params(common_name: &str) -> Result<CertificateParams, NetError> {
    if common_name.is_empty() {
        return Err(NetError::Tls("certificate name must not be empty".into()));
    }
    let mut sans = vec![SERVER_NAME.to_string()];
    if common_name != SERVER_NAME {
        sans.push(common_name.to_string());
    }
    let mut params = CertificateParams::new(sans).map_err(tls_err(
        "certificate name (must be a DNS name or IP address)",
    ))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, CERT_VALIDITY_DAYS)?;

    Ok(params)
}

/// The fingerprint of the (first) certificate in `ca_pem`: blake3 of its DER bytes. Join
/// tokens carry it so that a joiner, who has no CA certificate yet, can tell the real
/// cluster from an impostor before it sends its token.
pub fn ca_fingerprint(ca_pem: &str) -> Result<[u8; 32], NetError> {
    let certs = crate::tls::parse_certs(ca_pem, "CA certificate")?;
    let first = certs
        .first()
        .ok_or_else(|| NetError::Tls("no CA certificate".into()))?;
    Ok(*blake3::hash(first.as_ref()).as_bytes())
}

/// A new key and a certificate signing request for it: `(csr_pem, key_pem)`. The key
/// never leaves the joiner; the cluster signs the request.
pub fn new_csr(common_name: &str) -> Result<(String, String), NetError> {
    let key = KeyPair::generate().map_err(tls_err("generating key"))?;
    // Only the key matters: the signer decides every other field.
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(tls_err("signing request name"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(tls_err("creating signing request"))?;
    let pem = csr.pem().map_err(tls_err("encoding signing request"))?;
    Ok((pem, key.serialize_pem()))
}

/// Signs the public key of the signing request `csr_pem` with the CA, for `common_name`.
/// Everything else the request asks for (names, usages) is ignored: the certificate is
/// exactly what [`issue`] would make.
pub fn sign_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    common_name: &str,
) -> Result<String, NetError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err("CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(tls_err("CA certificate"))?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(tls_err("signing request"))?;
    csr.params = leaf_params(common_name)?;
    let cert = csr
        .signed_by(&issuer)
        .map_err(tls_err("signing certificate"))?;
    Ok(cert.pem())
}

/// Sets the validity: from yesterday (midnight UTC, for clock skew) for `days` days.
fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), NetError> {
    let now_days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| NetError::Tls("system clock is before 1970".into()))?
        .as_secs() as i64
        / 86_400;
    let start = now_days - BACKDATE_DAYS;
    let (y, m, d) = civil_from_days(start);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(start + BACKDATE_DAYS + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(())
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count since 1970-01-01
/// (Howard Hinnant's algorithm), so that `date_time_ymd` always gets a valid date.
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// Writes certificate material to `path` durably (fsynced), readable by the owner only
/// for keys (`private`) or by everyone for certificates.
pub fn write_file(path: &std::path::Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn issue_refuses_bad_input() {
        let (ca, ca_key) = new_ca("t").unwrap();
        assert!(issue(&ca, &ca_key, "").is_err());
        assert!(issue("not a pem", &ca_key, "n1").is_err());
        assert!(issue(&ca, "not a key", "n1").is_err());
        let (cert, key) = issue(&ca, &ca_key, "node-1").unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_signed_request_makes_a_certificate_of_the_cluster() {
        let (ca, ca_key) = new_ca("t").unwrap();
        let (csr, key) = new_csr("joiner").unwrap();
        let cert = sign_csr(&ca, &ca_key, &csr, "node7").unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert!(key.contains("PRIVATE KEY"));
        assert!(sign_csr(&ca, &ca_key, "garbage", "node7").is_err());
        let fp = ca_fingerprint(&ca).unwrap();
        let (other, _) = new_ca("t").unwrap();
        assert_ne!(fp, ca_fingerprint(&other).unwrap());
    }
}
