package dev.greenroom.client;

/**
 * The truth for one row of one earlier request.
 *
 * @param requestId the id of the request (the answer's {@link InferResult#id()})
 * @param row the row within the request's batch; 0 for single-row requests
 * @param label a class label as text, or a number as text for regression
 */
public record FeedbackItem(String requestId, long row, String label) {}
