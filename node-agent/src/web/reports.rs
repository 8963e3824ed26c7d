//! Pages that are not about one patient's results: statistics, the access report, the log
//! status.

use axum::Router;

use super::WebState;

pub fn routes() -> Router<WebState> {
    Router::new()
}
