//! What went wrong with a bucket, in words a user can act on.

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The URL is malformed or names no bucket.
    InvalidUrl,
    /// No such object or bucket.
    NotFound,
    /// Credentials missing or wrong, or access denied.
    Denied,
    /// The object changed since it was listed (its version tag no longer matches).
    Changed,
    /// Reading a local file for an upload failed.
    Local,
    /// Anything else left after retries (network, server errors).
    Other,
}

/// A failed object storage operation, naming the URL and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {message}")]
pub struct StoreError {
    /// The object or prefix.
    pub url: String,
    /// What kind of failure.
    pub kind: ErrorKind,
    message: String,
}

impl StoreError {
    pub(crate) fn invalid(url: &str, why: String) -> Self {
        Self {
            url: url.to_string(),
            kind: ErrorKind::InvalidUrl,
            message: format!("not a valid object storage URL ({why})"),
        }
    }

    pub(crate) fn local(url: &str, message: String) -> Self {
        Self {
            url: url.to_string(),
            kind: ErrorKind::Local,
            message,
        }
    }

    /// Classifies an `object_store` error (after its retries) for `url`.
    pub(crate) fn from_store(url: &str, e: object_store::Error) -> Self {
        use object_store::Error as E;
        let text = short_cause(&full_text(&e));
        let kind = match &e {
            E::NotFound { .. } => ErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::Denied,
            E::Precondition { .. } => ErrorKind::Changed,
            E::Generic { store, .. } if *store == "local file" => ErrorKind::Local,
            _ if [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
            ]
            .iter()
            .any(|c| text.contains(c)) =>
            {
                ErrorKind::Denied
            }
            _ if text.contains("NoSuchBucket") => ErrorKind::NotFound,
            // No credentials in the environment: object_store then asks the cloud machine's
            // metadata service, which is not there off the cloud.
            _ if text.contains("169.254.169.254") || text.contains("metadata") => ErrorKind::Denied,
            _ => ErrorKind::Other,
        };
        let message = match kind {
            ErrorKind::Denied => format!(
                "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, \
                 GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) and the bucket's permissions ({text})"
            ),
            ErrorKind::NotFound if text.contains("NoSuchBucket") => {
                format!("no such bucket ({text})")
            }
            ErrorKind::NotFound => format!("no such object ({text})"),
            ErrorKind::Changed => format!("the object changed since it was listed ({text})"),
            _ => text,
        };
        Self {
            url: url.to_string(),
            kind,
            message,
        }
    }

    /// A failure that retrying will not mend: a bad URL, a missing bucket or object, denied
    /// access. The CLI exits with code 2 for these.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::InvalidUrl | ErrorKind::NotFound | ErrorKind::Denied
        )
    }
}

/// The cause in a few words: the S3/GCS/Azure error code and message from an XML error body
/// (the rest of the body is request ids), else the text cut to 300 characters.
fn short_cause(text: &str) -> String {
    let tag = |name: &str| -> Option<&str> {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(&text[start..end])
    };
    let head = text.split("<?xml").next().unwrap_or(text).trim_end();
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{head} {code}: {message}"),
        _ if text.chars().count() > 300 => text.chars().take(300).collect::<String>() + "...",
        _ => text.to_string(),
    }
}

/// The error and its sources on one line.
fn full_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn store_errors_are_classified_and_shortened() {
        let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
                    <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not \
                    exist</Message><RequestId>XYZ</RequestId></Error>";
        let e = StoreError::from_store("s3://b/k", generic(body));
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.is_permanent());
        let text = e.to_string();
        assert!(text.starts_with("s3://b/k: no such bucket"), "{text}");
        assert!(
            text.contains("NoSuchBucket: The specified bucket does not exist"),
            "{text}"
        );
        assert!(!text.contains("RequestId"), "{text}");

        let e = StoreError::from_store(
            "s3://b/k",
            generic("403 Forbidden: <Error><Code>InvalidAccessKeyId</Code><Message>no such key id</Message></Error>"),
        );
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(e.to_string().contains("check the credentials"), "{e}");

        let e = StoreError::from_store(
            "s3://b/k",
            generic("Error performing PUT http://169.254.169.254/latest/api/token"),
        );
        assert_eq!(e.kind, ErrorKind::Denied);

        let e = StoreError::from_store("s3://b/k", generic("connection refused"));
        assert_eq!(e.kind, ErrorKind::Other);
        assert!(!e.is_permanent());
        let long = StoreError::from_store("s3://b/k", generic(&"x".repeat(1000)));
        assert!(long.to_string().len() < 400);
    }
}
