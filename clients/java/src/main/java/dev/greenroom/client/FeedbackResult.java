package dev.greenroom.client;

/**
 * What the gateway did with a batch of feedback.
 *
 * @param accepted items taken
 * @param matched items joined to a prediction in the ledger
 * @param unmatched items with no prediction yet: kept, and joined when it arrives
 * @param duplicates items that replaced an earlier truth for the same row
 */
public record FeedbackResult(long accepted, long matched, long unmatched, long duplicates) {}
