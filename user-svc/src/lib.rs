//! user-svc: owns user accounts. Takes RegisterUser from `user.commands`, keeps
//! e-mail addresses unique, and announces UserRegistered (or why not) on
//! `user.events`, from which order-svc and notification-svc build their
//! projections.

use events::{Envelope, Message, RegisterUser, UserRegistered, UserRegistrationRejected};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};
use sqlx::Row;

pub const SERVICE: &str = events::access::USER_SVC.service;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "user-svc", about = "Owns user accounts")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    Ok(app.consume(events::access::USER_SVC.consumes, Users))
}

struct Users;

impl Handler for Users {
    fn wants(&self, message: &Message) -> bool {
        matches!(message, Message::RegisterUser(_))
    }

    async fn handle(&self, event: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        match &event.message {
            Message::RegisterUser(command) => register_user(command, tx).await,
            _ => Ok(()),
        }
    }
}

async fn register_user(command: &RegisterUser, tx: &mut Tx) -> Result<(), HandlerError> {
    // No conflict target: a clash on the user id or on the address is an answer
    // to give, not an error. Two registrations of one address with different
    // user ids sit on different partitions and, on PostgreSQL, run at once: the
    // later insert waits for the earlier transaction, and once that committed it
    // inserts nothing (where a plain INSERT would fail on UNIQUE(email), an error
    // that dead-letters the command) and the owner is read below.
    let inserted = sqlx::query(
        "INSERT INTO users (user_id, email, name, registered_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(&command.user_id)
    .bind(&command.email)
    .bind(&command.name)
    .bind(platform::db::now_ms())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if inserted == 1 {
        tx.emit(UserRegistered {
            user_id: command.user_id.clone(),
            email: command.email.clone(),
            name: command.name.clone(),
        });
        return Ok(());
    }
    // Each statement sees what committed before it began (read committed), so
    // the row that won is visible here.
    let rows = sqlx::query("SELECT user_id, email FROM users WHERE email = $1 OR user_id = $2")
        .bind(&command.email)
        .bind(&command.user_id)
        .fetch_all(tx.conn())
        .await?;
    let clashes = rows
        .iter()
        .map(|row| Ok((row.try_get("user_id")?, row.try_get("email")?)))
        .collect::<Result<Vec<(String, String)>, sqlx::Error>>()?;
    let email_owner = clashes.iter().find(|(_, email)| *email == command.email).map(|(user, _)| user);
    let reason = match email_owner {
        // Same user, same email: a repeated command, already announced.
        Some(owner) if *owner == command.user_id => return Ok(()),
        Some(_) => format!("email {} is already registered to another user", command.email),
        None if clashes.iter().any(|(user, _)| *user == command.user_id) => {
            "user id already registered with another email".to_owned()
        }
        None => {
            return Err(HandlerError::transient(format!(
                "registering {}: the insert met a conflict that is not visible yet",
                command.user_id
            )))
        }
    };
    tx.emit(UserRegistrationRejected { user_id: command.user_id.clone(), reason });
    Ok(())
}
