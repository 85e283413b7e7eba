#include <gtest/gtest.h>
TEST(InspectCliTest, Placeholder) {}
