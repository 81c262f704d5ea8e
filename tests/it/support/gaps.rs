//! The longest time without an answer around a group event (a member joining, a member killed):
//! what the group tests (tests/it/groups.rs) print for each group protocol, to compare them.
//! Pure arithmetic on reply timestamps, so that it can be checked without a broker.
//!
//! What it relies on:
//! - A reply's timestamp is its CreateTime, set by the processor's producer when the reply is
//!   produced, from the same clock as the test's marks ([`now_ms`]): all processes run on this
//!   machine. So an interval between two timestamps is time in which no answer was produced,
//!   whatever the reader's own delays.
//! - Each command counts once, at its earliest reply ([`Collector::answered_at`]): a redelivered
//!   command's second reply is not an answer the group owed.
//! - The load keeps flowing through the whole window (the group tests pace it so), so that a
//!   gap is the group's doing, not a pause of the producer. Where a partition's commands are
//!   sparse, its gaps include the load's own pauses; the longest wait of a command (sent to
//!   answered, [`longest_wait`]) does not, and is printed beside them.
//!
//! [`Collector::answered_at`]: event_updater_harness::replies::Collector::answered_at

use std::collections::{BTreeMap, HashMap};

/// Milliseconds since the epoch, on the clock CreateTime is taken from.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The interval `[from_ms, to_ms]` (ms since the epoch) around an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// An interval with no answer: between two consecutive answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The answer before it.
    pub from_ms: i64,
    /// The answer after it.
    pub to_ms: i64,
}

impl Gap {
    pub fn ms(&self) -> i64 {
        self.to_ms - self.from_ms
    }
}

/// The longest interval between consecutive `times` that overlaps `window`: the answers in the
/// window, together with the last one before it and the first one after it, taken in order. A
/// gap that began before the window (or ends after it) counts whole; the time before the first
/// answer or after the last one at all does not count (there is no gap without two answers).
/// `None` with fewer than two such answers.
pub fn longest_gap(times: &[i64], window: Window) -> Option<Gap> {
    let mut points: Vec<i64> = times
        .iter()
        .copied()
        .filter(|t| (window.from_ms..=window.to_ms).contains(t))
        .collect();
    if let Some(before) = times.iter().copied().filter(|t| *t < window.from_ms).max() {
        points.push(before);
    }
    if let Some(after) = times.iter().copied().filter(|t| *t > window.to_ms).min() {
        points.push(after);
    }
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| Gap {
            from_ms: w[0],
            to_ms: w[1],
        })
        .max_by_key(Gap::ms)
}

/// The longest gap of any one partition in `window` (see [`longest_gap`]), with its partition:
/// how long the partition that waited most waited. `answers` are (partition, timestamp).
pub fn longest_partition_gap(answers: &[(i32, i64)], window: Window) -> Option<(i32, Gap)> {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, t) in answers {
        by_partition.entry(*p).or_default().push(*t);
    }
    by_partition
        .into_iter()
        .filter_map(|(p, times)| longest_gap(&times, window).map(|g| (p, g)))
        .max_by_key(|(_, g)| g.ms())
}

/// The longest any command waited for its answer among those waiting at some moment of
/// `window` (sent before it ended, answered after it began): `(request id, ms)`. `sent` holds
/// each command's request id and when it was handed to the producer; `answered` when it was
/// first answered (commands without an answer are left out: the exactly-once check reports
/// them).
pub fn longest_wait(
    sent: &[(String, i64)],
    answered: &HashMap<String, (i32, i64)>,
    window: Window,
) -> Option<(String, i64)> {
    sent.iter()
        .filter_map(|(id, at)| answered.get(id).map(|(_, done)| (id, *at, *done)))
        .filter(|(_, at, done)| *at <= window.to_ms && *done >= window.from_ms)
        .map(|(id, at, done)| (id.clone(), done - at))
        .max_by_key(|(_, ms)| *ms)
}

/// One line for the test output, e.g. `GAP protocol=consumer event=join longest_gap_ms=212
/// partition_longest_gap_ms=1840 partition=7 longest_wait_ms=1903 answers_in_window=2512
/// window_ms=15000`: the longest time in which the whole group answered nothing, the longest
/// one partition went without an answer (and which), and the longest a command waited for
/// its answer. `-1` where the window held too few answers to tell.
pub fn report(
    protocol: &str,
    event: &str,
    sent: &[(String, i64)],
    answered: &HashMap<String, (i32, i64)>,
    window: Window,
) -> String {
    let answers: Vec<(i32, i64)> = answered.values().copied().collect();
    let times: Vec<i64> = answers.iter().map(|(_, t)| *t).collect();
    let any = longest_gap(&times, window).map_or(-1, |g| g.ms());
    let (partition, one) =
        longest_partition_gap(&answers, window).map_or((-1, -1), |(p, g)| (p, g.ms()));
    let wait = longest_wait(sent, answered, window).map_or(-1, |(_, ms)| ms);
    let inside = times
        .iter()
        .filter(|t| (window.from_ms..=window.to_ms).contains(*t))
        .count();
    format!(
        "GAP protocol={protocol} event={event} longest_gap_ms={any} partition_longest_gap_ms={one} partition={partition} longest_wait_ms={wait} answers_in_window={inside} window_ms={}",
        window.to_ms - window.from_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        from_ms: 1_000,
        to_ms: 2_000,
    };

    #[test]
    fn the_longest_gap_inside_the_window() {
        let g = longest_gap(&[900, 1_100, 1_200, 1_900, 1_950, 2_100], W).unwrap();
        assert_eq!(
            g,
            Gap {
                from_ms: 1_200,
                to_ms: 1_900
            }
        );
        assert_eq!(g.ms(), 700);
    }

    #[test]
    fn a_gap_that_began_before_the_window_or_ends_after_it_counts_whole() {
        // The last answer before the window was at 100: the group has been silent since.
        let g = longest_gap(&[100, 1_500, 1_600], W).unwrap();
        assert_eq!((g.from_ms, g.to_ms), (100, 1_500));
        let g = longest_gap(&[1_100, 1_200, 5_000], W).unwrap();
        assert_eq!((g.from_ms, g.to_ms), (1_200, 5_000));
        // Nothing inside: the silence spans the window.
        let g = longest_gap(&[500, 3_000], W).unwrap();
        assert_eq!(g.ms(), 2_500);
    }

    #[test]
    fn answers_far_outside_the_window_do_not_count_and_order_does_not_matter() {
        // Only the nearest answer on either side counts: the 10 s silence before 800 is not
        // this window's.
        let g = longest_gap(&[2_050, 1_500, -9_000, 800, 1_000, 9_000], W).unwrap();
        assert_eq!((g.from_ms, g.to_ms), (1_500, 2_050));
    }

    #[test]
    fn fewer_than_two_answers_make_no_gap() {
        assert_eq!(longest_gap(&[], W), None);
        assert_eq!(longest_gap(&[1_500], W), None);
        assert_eq!(longest_gap(&[10], W), None);
        // Answers only before the window: the last one alone is near it.
        assert_eq!(longest_gap(&[10, 20], W), None);
    }

    #[test]
    fn the_partition_that_waited_most() {
        let answers = [
            (0, 1_000),
            (0, 1_100),
            (0, 1_200),
            (1, 1_000),
            (1, 1_800),
            (2, 1_050),
            (0, 1_300),
        ];
        let (p, g) = longest_partition_gap(&answers, W).unwrap();
        assert_eq!((p, g.ms()), (1, 800));
        // The group as a whole was never silent that long.
        let times: Vec<i64> = answers.iter().map(|(_, t)| *t).collect();
        assert_eq!(longest_gap(&times, W).unwrap().ms(), 500);
        assert_eq!(longest_partition_gap(&[], W), None);
    }

    fn answered(list: &[(&str, i32, i64)]) -> HashMap<String, (i32, i64)> {
        list.iter()
            .map(|(id, p, t)| (id.to_string(), (*p, *t)))
            .collect()
    }

    #[test]
    fn the_longest_wait_of_a_command_waiting_during_the_window() {
        let sent: Vec<(String, i64)> = [
            // Answered before the window: not waiting in it.
            ("early", 100),
            // Sent before the window, answered well inside it.
            ("stuck", 950),
            // A short wait inside.
            ("quick", 1_200),
            // Sent inside, answered after it.
            ("late", 1_900),
            // Sent after the window.
            ("after", 2_100),
            // No answer: left out.
            ("unanswered", 1_300),
        ]
        .iter()
        .map(|(id, t)| (id.to_string(), *t))
        .collect();
        let answered = answered(&[
            ("early", 0, 300),
            ("stuck", 1, 1_700),
            ("quick", 2, 1_250),
            ("late", 0, 2_500),
            ("after", 0, 9_000),
        ]);
        assert_eq!(
            longest_wait(&sent, &answered, W),
            Some(("stuck".into(), 750))
        );
        let w = Window {
            from_ms: 1_800,
            to_ms: 2_000,
        };
        assert_eq!(
            longest_wait(&sent, &answered, w),
            Some(("late".into(), 600))
        );
        assert_eq!(longest_wait(&sent, &HashMap::new(), W), None);
        assert_eq!(
            report("classic", "kill", &sent, &answered, W),
            "GAP protocol=classic event=kill longest_gap_ms=950 partition_longest_gap_ms=2200 partition=0 longest_wait_ms=750 answers_in_window=2 window_ms=1000"
        );
    }
}
