//! The store's connection string. A PostgreSQL URL may carry a password (in its user
//! information or as a `password=` parameter), so the value is only ever shown redacted:
//! `Display` and `Debug` hide it, and only [`DatabaseUrl::expose`] hands out the real
//! string, to the one place that connects.

use std::fmt;

use zeroize::Zeroizing;

const HIDDEN: &str = "***";

#[derive(Clone)]
pub struct DatabaseUrl(Zeroizing<String>);

impl DatabaseUrl {
    pub fn new(url: String) -> Self {
        DatabaseUrl(Zeroizing::new(url))
    }

    /// The full URL, password included. For connecting only; never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// The URL with every password replaced by `***`. A URL that does not parse is
    /// not shown at all: it might be a password with a typo around it.
    pub fn redacted(&self) -> String {
        if self.is_sqlite() {
            return self.0.to_string();
        }
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return "<database_url that does not parse as a URL>".to_owned();
        };
        if url.password().is_some() && url.set_password(Some(HIDDEN)).is_err() {
            return "<database_url>".to_owned();
        }
        let secret_param = |k: &str| {
            let k = k.to_ascii_lowercase();
            k.contains("password") || k.contains("passwd") || k == "sslkey" || k.contains("secret")
        };
        if url.query_pairs().any(|(k, _)| secret_param(&k)) {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if secret_param(&k) {
                        HIDDEN.to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(u: &str) -> (String, String) {
        let d = DatabaseUrl::new(u.to_owned());
        (d.to_string(), format!("{d:?}"))
    }

    #[test]
    fn passwords_never_show() {
        for (url, want) in [
            (
                "postgres://herse:s3cret@db.internal:5432/herse",
                "postgres://herse:***@db.internal:5432/herse",
            ),
            (
                "postgresql://herse@db/herse?sslmode=require&password=s3cret",
                "postgresql://herse@db/herse?sslmode=require&password=***",
            ),
            (
                "postgres://db/herse?PassWord=s3cret",
                "postgres://db/herse?PassWord=***",
            ),
            ("postgres://herse@db/herse", "postgres://herse@db/herse"),
            ("sqlite:///var/lib/herse/herse.db", "sqlite:///var/lib/herse/herse.db"),
        ] {
            let (display, debug) = shown(url);
            assert_eq!(display, want);
            assert!(!display.contains("s3cret") && !debug.contains("s3cret"), "{debug}");
        }
        let (display, _) = shown("postgres://herse:s3cret@[bad");
        assert!(!display.contains("s3cret"), "{display}");
        assert_eq!(
            DatabaseUrl::new("postgres://a:s3cret@h/d".into()).expose(),
            "postgres://a:s3cret@h/d"
        );
    }
}
