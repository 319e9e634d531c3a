//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954). Pure: base64 in,
//! credentials or a refusal out; checking the password is the policy's job.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::refusal::Refusal;

/// Base64 of "Username:" and "Password:", the LOGIN mechanism's prompts.
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Decodes one client response line of a SASL exchange. `*` cancels (RFC 4954 §4).
pub fn decode_response(line: &str) -> Result<Vec<u8>, Refusal> {
    let line = line.trim_end();
    if line == "*" {
        return Err(Refusal::AuthCancelled);
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| Refusal::AuthMalformed)
}

/// Decodes a PLAIN response: `[authzid] NUL authcid NUL passwd`. An authorization identity
/// different from the authentication identity is refused: nobody may act as another account.
pub fn decode_plain(response: &[u8]) -> Result<Credentials, Refusal> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::AuthMalformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| Refusal::AuthMalformed);
    let username = text(authcid)?;
    if username.is_empty() || (!authzid.is_empty() && authzid != authcid) {
        return Err(Refusal::AuthFailed);
    }
    Ok(Credentials {
        username,
        password: text(passwd)?,
    })
}

/// Decodes one LOGIN step (username or password) to text.
pub fn decode_login_step(response: &[u8]) -> Result<String, Refusal> {
    String::from_utf8(response.to_vec()).map_err(|_| Refusal::AuthMalformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        let raw = decode_response(&STANDARD.encode("\0user\0secret")).unwrap();
        let c = decode_plain(&raw).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "secret")
        );
        let raw = decode_response(&STANDARD.encode("user\0user\0pw")).unwrap();
        assert!(decode_plain(&raw).is_ok());
        let raw = decode_response(&STANDARD.encode("admin\0user\0pw")).unwrap();
        assert_eq!(decode_plain(&raw), Err(Refusal::AuthFailed));
        assert_eq!(decode_plain(b"no-nuls"), Err(Refusal::AuthMalformed));
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response("*"), Err(Refusal::AuthCancelled));
        assert_eq!(decode_response("!!!"), Err(Refusal::AuthMalformed));
        assert_eq!(decode_response("=").unwrap(), b"");
        assert!(
            !format!(
                "{:?}",
                Credentials {
                    username: "u".into(),
                    password: "p4ss".into()
                }
            )
            .contains("p4ss")
        );
    }
}
