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
        E::Database(ref db) => {
            // sqlx gives SQLite's extended result code; its low byte is the primary one.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            match primary {
                // SQLITE_BUSY, SQLITE_LOCKED (still locked after the busy timeout),
                // SQLITE_IOERR, SQLITE_CANTOPEN
                Some(5 | 6 | 10 | 14) => StoreError::Unavailable(Box::new(err)),
                // SQLITE_CORRUPT, SQLITE_NOTADB
                Some(11 | 26) => StoreError::Corrupt(err.to_string()),
                _ => StoreError::Backend(Box::new(err)),
            }
        }
        _ => StoreError::Backend(Box::new(err)),
    }
}

/// Maps a migration error.
pub(crate) fn map_migrate_err(err: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Migration(Box::new(err))
}
