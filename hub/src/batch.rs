//! Gathering what is waiting on a channel into one batch: the group-commit step the intake,
//! the journal and the signature verifier share.

use tokio::sync::mpsc;

/// Waits for one message, then takes every message already waiting, until the batch's total
/// `weight` reaches `limit` (the message that reaches it is included). `None` once every sender
/// is gone and nothing is left.
pub(crate) async fn next_batch<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    limit: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut total = weight(&first);
    let mut batch = vec![first];
    while total < limit {
        match rx.try_recv() {
            Ok(next) => {
                total += weight(&next);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_what_is_waiting_up_to_the_limit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in [3, 4, 5, 6] {
            tx.send(n).unwrap();
        }
        // 3 + 4 = 7 < 8, so 5 joins; 12 reaches the limit.
        assert_eq!(next_batch(&mut rx, 8, |n| *n).await, Some(vec![3, 4, 5]));
        assert_eq!(next_batch(&mut rx, 8, |n| *n).await, Some(vec![6]));
        drop(tx);
        assert_eq!(next_batch(&mut rx, 8, |n| *n).await, None);
    }
}
