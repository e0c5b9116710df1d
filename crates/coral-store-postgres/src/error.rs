//! How sqlx errors become [`StoreError`]s.

use coral_store::StoreError;

/// Maps a sqlx error to the store's error kinds.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match err {
        E::RowNotFound => StoreError::NotFound("row".into()),
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
            StoreError::Unavailable(Box::new(err))
        }
        E::ColumnDecode { .. } | E::Decode(_) => StoreError::Corrupt(err.to_string()),
        E::Migrate(migrate) => StoreError::Migration(migrate),
        E::Database(ref db) => match db.code().as_deref().map(sqlstate_kind) {
            Some(Kind::Transient) => StoreError::Unavailable(Box::new(err)),
            Some(Kind::Corrupt) => StoreError::Corrupt(err.to_string()),
            _ => StoreError::Backend(Box::new(err)),
        },
        _ => StoreError::Backend(Box::new(err)),
    }
}

/// Maps a migration error.
pub(crate) fn map_migrate_err(err: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Migration(Box::new(err))
}

enum Kind {
    Transient,
    Corrupt,
    Other,
}

/// Classifies a PostgreSQL SQLSTATE.
fn sqlstate_kind(code: &str) -> Kind {
    match code {
        // connection_exception and its subclasses
        c if c.starts_with("08") => Kind::Transient,
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
        // serialization_failure, deadlock_detected
        "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" => Kind::Transient,
        // data_corrupted, index_corrupted
        "XX001" | "XX002" => Kind::Corrupt,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_store_errors() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for unavailable in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(refused),
        ] {
            assert!(matches!(map_err(unavailable), StoreError::Unavailable(_)));
        }
        assert!(matches!(
            map_err(sqlx::Error::RowNotFound),
            StoreError::NotFound(_)
        ));
        let decode = sqlx::Error::Decode("bad json".into());
        assert!(matches!(map_err(decode), StoreError::Corrupt(_)));
        let protocol = sqlx::Error::Protocol("?".into());
        assert!(matches!(map_err(protocol), StoreError::Backend(_)));
        assert!(matches!(sqlstate_kind("08006"), Kind::Transient));
        assert!(matches!(sqlstate_kind("40P01"), Kind::Transient));
        assert!(matches!(sqlstate_kind("XX001"), Kind::Corrupt));
        assert!(matches!(sqlstate_kind("23505"), Kind::Other));
    }
}
