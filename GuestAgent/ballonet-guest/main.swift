import BallonetGuest

GuestCommand.main()
