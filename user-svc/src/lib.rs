//! user-svc: owns user accounts. Takes RegisterUser from `user.commands`, keeps
//! e-mail addresses unique, and announces UserRegistered (or why not) on
//! `user.events`, from which order-svc and notification-svc build their
//! projections.

use events::{topics, Envelope, Message, RegisterUser, UserRegistered, UserRegistrationRejected};
use platform::{App, Handler, HandlerError, PlatformConfig, Tx};
use sqlx::Row;

pub const SERVICE: &str = "user-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "user-svc", about = "Owns user accounts")]
pub struct Config {
    #[command(flatten)]
    pub platform: PlatformConfig,
}

pub async fn build(config: Config) -> Result<App, platform::Error> {
    let app = App::build(SERVICE, config.platform, &MIGRATIONS).await?;
    Ok(app.consume(&[topics::USER_COMMANDS], Users))
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
    let owner = sqlx::query("SELECT user_id FROM users WHERE email = $1")
        .bind(&command.email)
        .fetch_optional(tx.conn())
        .await?;
    if let Some(owner) = owner {
        let owner: String = owner.try_get("user_id")?;
        if owner != command.user_id {
            tx.emit(UserRegistrationRejected {
                user_id: command.user_id.clone(),
                reason: format!("email {} is already registered to another user", command.email),
            });
        }
        // Same user, same email: a repeated command, already announced.
        return Ok(());
    }
    let inserted = sqlx::query(
        "INSERT INTO users (user_id, email, name, registered_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(&command.user_id)
    .bind(&command.email)
    .bind(&command.name)
    .bind(platform::db::now_ms())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.emit(UserRegistrationRejected {
            user_id: command.user_id.clone(),
            reason: "user id already registered with another email".into(),
        });
        return Ok(());
    }
    tx.emit(UserRegistered {
        user_id: command.user_id.clone(),
        email: command.email.clone(),
        name: command.name.clone(),
    });
    Ok(())
}
